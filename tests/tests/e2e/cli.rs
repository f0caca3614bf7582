//! The `kopilka` command against a running suite: `admin` (stores, terminals, keys, program),
//! `receipt` (calculate, confirm, refund) and a short `load` run, asserting on output and exit
//! codes. The binary is the one cargo built next to this test (built now if missing).

use std::path::{Path, PathBuf};
use std::process::Output;

use kopilka_tests::{Backend, SeededMerchant, TestSuite};

/// `target/<profile>/kopilka`, next to `target/<profile>/deps/cli-…`.
fn kopilka_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    let bin = profile_dir.join(format!("kopilka{}", std::env::consts::EXE_SUFFIX));
    // Build it (a no-op when fresh) so the test never runs a stale binary; if the build fails
    // (a neighbour's crate mid-edit) an existing binary is still used.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut build = std::process::Command::new(cargo);
    build.args(["build", "-p", "kopilka", "--bin", "kopilka"]);
    if release {
        build.arg("--release");
    }
    let built = build
        .current_dir(workspace_root())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        built || bin.exists(),
        "cannot build the kopilka binary and none exists at {}",
        bin.display()
    );
    bin
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

struct Cli {
    bin: PathBuf,
    gateway: String,
    admin_key: String,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self, what: &str) -> Self {
        assert_eq!(
            self.code, 0,
            "{what} failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    fn failed(self, what: &str) -> Self {
        assert_eq!(
            self.code, 1,
            "{what} should fail with exit code 1\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The word after `prefix` on the line starting with it.
    fn value_after(&self, prefix: &str) -> String {
        self.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{}", self.stdout))
            .to_owned()
    }
}

impl Cli {
    fn new(suite: &TestSuite, merchant: &SeededMerchant) -> Self {
        Cli {
            bin: kopilka_bin(),
            gateway: format!("http://{}", suite.addrs.gateway),
            admin_key: merchant.admin_key.clone(),
        }
    }

    /// Runs `kopilka <args>` with the admin key in the environment.
    async fn run(&self, args: &[&str]) -> Run {
        self.run_with_key(&self.admin_key, args).await
    }

    async fn run_with_key(&self, key: &str, args: &[&str]) -> Run {
        let Output {
            status,
            stdout,
            stderr,
        } = tokio::process::Command::new(&self.bin)
            .args(args)
            .env("KOPILKA_GATEWAY_URL", &self.gateway)
            .env("KOPILKA_ADMIN_KEY", key)
            .env_remove("KOPILKA_TERMINAL_KEY")
            .env_remove("KOPILKA_TERMINAL_ID")
            .current_dir(workspace_root())
            .output()
            .await
            .expect("run kopilka");
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_receipts_over_the_gateway() {
    let suite = TestSuite::start(Backend::Sqlite).await;
    let merchant = suite.seed_merchant("m1").await;
    let cli = Cli::new(&suite, &merchant);

    // Stores and terminals.
    let store = cli
        .run(&[
            "admin",
            "store",
            "create",
            "--name",
            "Side street",
            "--address",
            "2 Side street",
        ])
        .await
        .ok("store create");
    let store_id = store.value_after("Store created:");
    let list = cli.run(&["admin", "store", "list"]).await.ok("store list");
    assert!(list.stdout.contains("Side street"), "{}", list.stdout);
    assert!(list.stdout.contains(&store_id), "{}", list.stdout);

    let terminal = cli
        .run(&[
            "admin", "terminal", "create", "--store", &store_id, "--name", "Till 2",
        ])
        .await
        .ok("terminal create");
    let terminal_id = terminal.value_after("Terminal created:");
    let list = cli
        .run(&["admin", "terminal", "list"])
        .await
        .ok("terminal list");
    assert!(list.stdout.contains(&terminal_id), "{}", list.stdout);
    assert!(list.stdout.contains("Till 2"), "{}", list.stdout);

    // Keys: the secret is printed once, never listed.
    let issued = cli
        .run(&[
            "admin",
            "key",
            "issue",
            "--scope",
            "terminal",
            "--terminal",
            &terminal_id,
            "--name",
            "till 2",
        ])
        .await
        .ok("key issue");
    assert!(
        issued.stdout.contains("shown only this once"),
        "{}",
        issued.stdout
    );
    let key_id = issued.value_after("API key issued:");
    let secret = issued
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Secret"))
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("Secret"))
        .expect("the secret line")
        .to_owned();
    assert!(secret.len() > 16, "{secret}");
    let keys = cli.run(&["admin", "key", "list"]).await.ok("key list");
    assert!(keys.stdout.contains(&key_id), "{}", keys.stdout);
    assert!(!keys.stdout.contains(&secret), "key list shows a secret");
    assert!(
        !keys.stdout.contains(&merchant.admin_key),
        "key list shows the admin key"
    );
    let admin = cli
        .run(&["admin", "key", "issue", "--scope", "admin", "--name", "ops"])
        .await
        .ok("admin key issue");
    assert!(admin.stdout.contains("ADMIN"), "{}", admin.stdout);

    // The program.
    let applied = cli
        .run(&[
            "admin",
            "program",
            "apply",
            "rules-svc/programs/demo-cafe.yaml",
        ])
        .await
        .ok("program apply");
    assert!(
        applied.stdout.contains("Program published: version"),
        "{}",
        applied.stdout
    );
    assert!(applied.stdout.contains("active now"), "{}", applied.stdout);
    let active = cli
        .run(&["admin", "program", "active"])
        .await
        .ok("program active");
    assert!(active.stdout.contains("Demo café"), "{}", active.stdout);
    assert!(
        active.stdout.contains("receipt-brackets"),
        "{}",
        active.stdout
    );

    // An invalid program: non-zero exit, the field path printed.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "name: Broken\nsettings: {currency: RUB}\nrules:\n  - id: brackets\n    name: Bad brackets\n    accrue_brackets:\n      brackets:\n        - {at_least: \"0\", percent: \"abc\"}\n",
    )
    .unwrap();
    let invalid = cli
        .run(&["admin", "program", "apply", broken.to_str().unwrap()])
        .await
        .failed("invalid program apply");
    assert!(
        invalid.stderr.contains("PROGRAM_INVALID"),
        "{}",
        invalid.stderr
    );
    assert!(invalid.stderr.contains("rules[0]"), "{}", invalid.stderr);
    let missing = cli
        .run(&["admin", "program", "apply", "no/such/file.yaml"])
        .await
        .failed("missing program file");
    assert!(
        missing.stderr.contains("no/such/file.yaml"),
        "{}",
        missing.stderr
    );

    // Receipts rung up by hand: with the admin key naming the new terminal.
    let phone = "+7 912 345-67-89";
    let lines = [
        "--line",
        "latte:2:200",
        "--line",
        "cheesecake:1:290",
        "--line",
        "old-bun:1:60:sale",
    ];
    let mut args = vec![
        "receipt",
        "calculate",
        "--terminal",
        &terminal_id,
        "--card",
        phone,
        "--preview-new-customer",
    ];
    args.extend(lines);
    let calc = cli.run(&args).await.ok("receipt calculate");
    assert!(calc.stdout.contains("gross"), "{}", calc.stdout);
    assert!(
        calc.stdout.contains("750"),
        "gross 2×200 + 290 + 60:\n{}",
        calc.stdout
    );
    assert!(calc.stdout.contains("latte"), "{}", calc.stdout);

    let mut args = vec![
        "receipt",
        "confirm",
        "--terminal",
        &terminal_id,
        "--card",
        phone,
        "--register",
        "--first-name",
        "Ирина",
        "--receipt-id",
        "r-1",
    ];
    args.extend(lines);
    let confirmed = cli.run(&args).await.ok("receipt confirm");
    assert!(
        confirmed
            .stdout
            .contains("Receipt r-1 confirmed (CONFIRMED)"),
        "{}",
        confirmed.stdout
    );
    assert!(
        confirmed.stdout.contains("Balance after"),
        "{}",
        confirmed.stdout
    );

    // The same terminal's own key, no --terminal: the customer now has points.
    let mut args = vec!["receipt", "calculate", "--card", phone, "--redeem", "10"];
    args.extend(lines);
    let again = cli
        .run_with_key(&secret, &args)
        .await
        .ok("calculate with the terminal key");
    assert!(again.stdout.contains("Balance before"), "{}", again.stdout);
    assert!(!again.stdout.contains("anonymous"), "{}", again.stdout);

    let refund = cli
        .run(&[
            "receipt",
            "refund",
            "--terminal",
            &terminal_id,
            "--receipt-id",
            "r-1",
            "--line",
            "1:1",
        ])
        .await
        .ok("receipt refund");
    assert!(
        refund.stdout.contains("PARTIALLY_REFUNDED"),
        "{}",
        refund.stdout
    );
    assert!(
        refund.stdout.contains("cash to hand back"),
        "{}",
        refund.stdout
    );
    let get = cli
        .run(&["receipt", "get", "--receipt-id", "r-1"])
        .await
        .ok("receipt get");
    assert!(get.stdout.contains("PARTIALLY_REFUNDED"), "{}", get.stdout);

    // Errors: code and reason on stderr, exit code 1.
    let refused = cli
        .run_with_key("kpk_not_a_key", &["admin", "store", "list"])
        .await
        .failed("a bad key");
    assert!(
        refused.stderr.contains("UNAUTHENTICATED"),
        "{}",
        refused.stderr
    );
    assert!(
        !refused.stderr.contains("kpk_not_a_key"),
        "the key is echoed"
    );
    let bad_line = cli
        .run(&[
            "receipt",
            "calculate",
            "--terminal",
            &terminal_id,
            "--line",
            "latte:0:200",
        ])
        .await
        .failed("a zero quantity");
    assert!(bad_line.stderr.contains("quantity"), "{}", bad_line.stderr);
    let unknown = cli
        .run(&[
            "receipt",
            "refund",
            "--terminal",
            &terminal_id,
            "--receipt-id",
            "nope",
        ])
        .await
        .failed("refund of an unknown receipt");
    assert!(unknown.stderr.contains("NOT_FOUND"), "{}", unknown.stderr);

    // Revoking the key and disabling the terminal.
    cli.run(&["admin", "key", "revoke", &key_id])
        .await
        .ok("key revoke");
    cli.run(&["admin", "terminal", "disable", &terminal_id])
        .await
        .ok("terminal disable");
    let list = cli
        .run(&["admin", "terminal", "list", "--all"])
        .await
        .ok("terminal list --all");
    assert!(list.stdout.contains(&terminal_id), "{}", list.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_load_run_reports_json() {
    let suite = TestSuite::start(Backend::Sqlite).await;
    let merchant = suite.seed_merchant("m1").await;
    let cli = Cli::new(&suite, &merchant);
    cli.run(&[
        "admin",
        "program",
        "apply",
        "rules-svc/programs/demo-cafe.yaml",
    ])
    .await
    .ok("program apply");
    // Gentle enough for the default 20 requests/s per terminal key. Open loop: checkout i is
    // scheduled at i / rate from the start, and every one scheduled within the measured
    // duration is counted however late it runs, so the run makes exactly rate × duration
    // checkouts — 4/s × 2 s = 8, each a Calculate and a Confirm — whatever the machine's speed.
    let run = cli
        .run(&[
            "load",
            "--key",
            &merchant.terminal_key,
            "--admin-key",
            &merchant.admin_key,
            "--rate",
            "4",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--cards",
            "5",
            "--quiet",
        ])
        .await
        .ok("load");
    // call, ok, per s, p50, p95, p99, p99.9, max, errors
    for name in ["calculate", "confirm", "checkout"] {
        let row: Vec<&str> = run
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in:\n{}\n{}", run.stdout, run.stderr))
            .split_whitespace()
            .collect();
        assert_eq!(row.len(), 9, "{row:?}");
        let ok: u64 = row[1].parse().unwrap();
        assert_eq!(ok, 8, "{name}: {row:?}\n{}", run.stderr);
        assert_eq!(row[8], "0", "{name} errors:\n{}", run.stdout);
        let p99: f64 = row[5].parse().unwrap();
        assert!(p99 > 0.0, "{row:?}");
    }
    assert!(
        run.stderr.contains("5 customers ready (5 new)"),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains(&merchant.terminal_key));
    assert!(!run.stderr.contains(&merchant.terminal_key));

    // --json for scripts.
    let json = cli
        .run(&[
            "load",
            "--key",
            &merchant.terminal_key,
            "--skip-setup",
            "--rate",
            "2",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--cards",
            "5",
            "--json",
            "--quiet",
        ])
        .await
        .ok("load --json");
    let out = json.stdout.trim();
    assert!(out.starts_with('{') && out.ends_with('}'), "{out}");
    assert!(out.contains("\"call\": \"calculate\""), "{out}");
    // 2/s × 1 s: exactly 2 of each call, none failed.
    for call in ["calculate", "confirm", "checkout"] {
        let at = out
            .find(&format!("\"call\": \"{call}\""))
            .unwrap_or_else(|| panic!("no {call} in {out}"));
        let entry = &out[at..at + out[at..].find('}').expect("the entry ends")];
        assert!(entry.contains("\"count\": 2,"), "{call}: {entry}");
        assert!(entry.contains("\"errors\": 0"), "{call}: {entry}");
    }
    assert!(out.contains("\"p99_ms\""), "{out}");
}
