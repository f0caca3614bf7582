//! `kopilka receipt calculate|confirm|refund|get`: ringing up a receipt by hand over
//! CheckoutService, with an admin key naming a terminal (or a terminal key).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;
use clap::{Args, Subcommand};
use kopilka_proto::gateway as gw;
use kopilka_proto::ledger as ledger_pb;
use kopilka_proto::rules as rules_pb;
use kopilka_proto::types::{BasketLine, IdentifierInput};
use rust_decimal::Decimal;

use super::table::Table;
use super::{or_dash, request_id, CliResult, Client, Endpoint};

/// `kopilka receipt`.
#[derive(Args, Debug)]
pub struct ReceiptArgs {
    #[command(flatten)]
    pub endpoint: Endpoint,
    /// Idempotency key of confirm / refund; default a fresh uuid.
    #[arg(long, global = true)]
    pub request_id: Option<String>,
    /// The terminal (required with an admin key; leave out with a terminal key).
    #[arg(long, env = "KOPILKA_TERMINAL_ID", global = true)]
    pub terminal: Option<String>,
    #[command(subcommand)]
    pub command: ReceiptCommand,
}

#[derive(Subcommand, Debug)]
pub enum ReceiptCommand {
    /// Computes discounts, points and hints for a receipt draft; books nothing.
    Calculate {
        #[command(flatten)]
        basket: BasketArgs,
        /// Keep the answer with this receipt id (GetCheckout); default none.
        #[arg(long)]
        receipt_id: Option<String>,
        /// For an unknown phone: calculate as if the customer registered now.
        #[arg(long)]
        preview_new_customer: bool,
    },
    /// Books the receipt: accrual and redemption.
    Confirm {
        #[command(flatten)]
        basket: BasketArgs,
        /// The register's receipt id; default a fresh uuid.
        #[arg(long)]
        receipt_id: Option<String>,
        /// The fiscal reference to store.
        #[arg(long, default_value = "")]
        fiscal_ref: String,
        /// When --card is a phone no customer has: register that customer first.
        #[arg(long, requires = "card")]
        register: bool,
        /// The new customer's first name (with --register).
        #[arg(long, requires = "register")]
        first_name: Option<String>,
    },
    /// Refunds a confirmed receipt, fully or by lines.
    Refund {
        #[arg(long)]
        receipt_id: String,
        /// A line to refund, `line_id[:quantity]` (repeatable); none = everything left.
        #[arg(long = "line", value_name = "LINE_ID[:QTY]")]
        lines: Vec<String>,
        /// The return document id; default a fresh uuid.
        #[arg(long)]
        refund_id: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Shows a checkout's state and stored answers.
    Get {
        #[arg(long)]
        receipt_id: String,
    },
}

/// The receipt's lines, buyer and redemption.
#[derive(Args, Debug, Clone)]
pub struct BasketArgs {
    /// The buyer's card number or phone as entered; default anonymous.
    #[arg(long, conflicts_with = "customer_id")]
    pub card: Option<String>,
    /// The buyer's customer id (from an earlier answer).
    #[arg(long)]
    pub customer_id: Option<String>,
    /// A line `sku:qty:price[:category[,category…]]` (repeatable).
    #[arg(
        long = "line",
        value_name = "SKU:QTY:PRICE[:CATEGORY]",
        required_unless_present = "lines_file"
    )]
    pub lines: Vec<String>,
    /// The lines from a JSON file: an array of kopilka.type.v1.BasketLine (proto JSON).
    #[arg(long = "lines", value_name = "FILE.json", conflicts_with = "lines")]
    pub lines_file: Option<PathBuf>,
    /// Points to pay with.
    #[arg(long)]
    pub redeem: Option<String>,
    /// A promo code (repeatable).
    #[arg(long = "promo")]
    pub promo_codes: Vec<String>,
}

impl BasketArgs {
    fn buyer(&self) -> Option<gw::Buyer> {
        let who = if let Some(card) = &self.card {
            gw::buyer::Who::Identifier(IdentifierInput {
                raw: card.clone(),
                kind_hint: 0,
            })
        } else if let Some(id) = &self.customer_id {
            gw::buyer::Who::CustomerId(id.clone())
        } else {
            return None;
        };
        Some(gw::Buyer { who: Some(who) })
    }

    fn basket(&self) -> anyhow::Result<Vec<BasketLine>> {
        match &self.lines_file {
            Some(path) => read_lines_file(path),
            None => self
                .lines
                .iter()
                .enumerate()
                .map(|(i, spec)| parse_line(i + 1, spec))
                .collect(),
        }
    }

    fn redeem(&self) -> anyhow::Result<String> {
        match &self.redeem {
            None => Ok(String::new()),
            Some(text) => {
                let points = Decimal::from_str(text.trim())
                    .map_err(|_| anyhow::anyhow!("--redeem {text:?} is not a number"))?;
                if points.is_sign_negative() {
                    anyhow::bail!("--redeem must not be negative");
                }
                Ok(points.normalize().to_string())
            }
        }
    }
}

/// `sku:qty:price[:category[,category…]]` → a basket line with id `n`.
pub fn parse_line(n: usize, spec: &str) -> anyhow::Result<BasketLine> {
    let parts: Vec<&str> = spec.split(':').map(str::trim).collect();
    if !(3..=4).contains(&parts.len()) || parts[0].is_empty() {
        anyhow::bail!("--line {spec:?}: expected sku:qty:price[:category]");
    }
    let quantity = Decimal::from_str(parts[1])
        .map_err(|_| anyhow::anyhow!("--line {spec:?}: quantity {:?} is not a number", parts[1]))?;
    if quantity <= Decimal::ZERO {
        anyhow::bail!("--line {spec:?}: quantity must be positive");
    }
    let price = Decimal::from_str(parts[2])
        .map_err(|_| anyhow::anyhow!("--line {spec:?}: price {:?} is not a number", parts[2]))?;
    if price.is_sign_negative() {
        anyhow::bail!("--line {spec:?}: price must not be negative");
    }
    let category_ids = parts
        .get(3)
        .map(|c| {
            c.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(BasketLine {
        line_id: n.to_string(),
        product_id: parts[0].to_owned(),
        sku: parts[0].to_owned(),
        category_ids,
        unit_price: price.to_string(),
        quantity: quantity.to_string(),
        ..Default::default()
    })
}

/// A JSON array of basket lines (or `{"lines": [...]}`); missing line ids become 1, 2, …
pub fn read_lines_file(path: &Path) -> anyhow::Result<Vec<BasketLine>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    if let Some(lines) = value.get_mut("lines") {
        value = lines.take();
    }
    let mut lines: Vec<BasketLine> = serde_json::from_value(value)
        .with_context(|| format!("{}: not an array of basket lines", path.display()))?;
    for (i, line) in lines.iter_mut().enumerate() {
        if line.line_id.is_empty() {
            line.line_id = (i + 1).to_string();
        }
        if line.product_id.is_empty() {
            line.product_id = line.sku.clone();
        }
    }
    if lines.is_empty() {
        anyhow::bail!("{}: no lines", path.display());
    }
    Ok(lines)
}

/// `line_id[:qty]` → a refund line.
fn parse_refund_line(spec: &str) -> anyhow::Result<gw::RefundLine> {
    let (line_id, quantity) = match spec.split_once(':') {
        Some((id, qty)) => {
            let q = Decimal::from_str(qty.trim())
                .map_err(|_| anyhow::anyhow!("--line {spec:?}: quantity is not a number"))?;
            if q <= Decimal::ZERO {
                anyhow::bail!("--line {spec:?}: quantity must be positive");
            }
            (id.trim(), q.to_string())
        }
        None => (spec.trim(), String::new()),
    };
    if line_id.is_empty() {
        anyhow::bail!("--line {spec:?}: expected line_id[:qty]");
    }
    Ok(gw::RefundLine {
        line_id: line_id.to_owned(),
        quantity,
    })
}

pub async fn run(args: ReceiptArgs) -> CliResult {
    let client = Client::from_endpoint(&args.endpoint)?;
    let terminal_id = args.terminal.clone().unwrap_or_default();
    let mut checkout = client.checkout();
    match args.command {
        ReceiptCommand::Calculate {
            basket,
            receipt_id,
            preview_new_customer,
        } => {
            let lines = basket.basket()?;
            let answer = checkout
                .calculate(client.request(gw::CalculateRequest {
                    receipt_id: receipt_id.clone().unwrap_or_default(),
                    buyer: basket.buyer(),
                    lines: lines.clone(),
                    promo_codes: basket.promo_codes.clone(),
                    redeem_points: basket.redeem()?,
                    occurred_at: None,
                    terminal_id,
                    preview_new_customer,
                    explain: rules_pb::ExplainLevel::Applied as i32,
                }))
                .await?
                .into_inner();
            let calc = answer.calculation.unwrap_or_default();
            match &receipt_id {
                Some(id) => println!("Calculation for receipt {id} (nothing booked)"),
                None => println!("Calculation (nothing booked)"),
            }
            print_calculation(&calc, &lines);
        }
        ReceiptCommand::Confirm {
            basket,
            receipt_id,
            fiscal_ref,
            register,
            first_name,
        } => {
            let lines = basket.basket()?;
            let receipt_id = receipt_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let answer = checkout
                .confirm(client.request(gw::ConfirmRequest {
                    request_id: request_id(&args.request_id),
                    receipt_id: receipt_id.clone(),
                    buyer: basket.buyer(),
                    lines: lines.clone(),
                    promo_codes: basket.promo_codes.clone(),
                    redeem_points: basket.redeem()?,
                    occurred_at: None,
                    terminal_id,
                    fiscal_ref,
                    register_if_unknown: register.then(|| gw::CustomerDetails {
                        first_name: first_name.unwrap_or_default(),
                        ..Default::default()
                    }),
                }))
                .await?
                .into_inner();
            let co = answer.checkout.clone().unwrap_or_default();
            println!(
                "Receipt {} confirmed ({})",
                or_dash(&co.receipt_id),
                state_name(co.state)
            );
            let calc = co.calculation.clone().unwrap_or_default();
            print_calculation_body(&calc, &lines);
            if let Some(b) = &answer.balance {
                println!("Balance after: {}", balance_line(b));
            }
            if let Some(c) = &answer.customer {
                if !c.tier_code.is_empty() {
                    let changed = if answer.tier_changed {
                        " (changed now)"
                    } else {
                        ""
                    };
                    println!("Tier: {} {}{changed}", c.tier_code, c.tier_name);
                }
            }
            print_list("Slip", &answer.print_lines);
            println!();
            println!(
                "Refund it with: kopilka receipt refund --receipt-id {receipt_id} [--line <line_id>[:qty]]"
            );
        }
        ReceiptCommand::Refund {
            receipt_id,
            lines,
            refund_id,
            reason,
        } => {
            let lines = lines
                .iter()
                .map(|l| parse_refund_line(l))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let refund_id = refund_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let answer = checkout
                .refund(client.request(gw::RefundRequest {
                    request_id: request_id(&args.request_id),
                    receipt_id: receipt_id.clone(),
                    refund_id,
                    lines,
                    occurred_at: None,
                    reason,
                    terminal_id,
                }))
                .await?
                .into_inner();
            let refund = answer.refund.unwrap_or_default();
            let state = answer
                .checkout
                .as_ref()
                .map(|c| state_name(c.state))
                .unwrap_or("?");
            println!(
                "Refund {} of receipt {receipt_id} booked ({state})",
                refund.refund_id
            );
            print_refund(&refund);
            if let Some(b) = &answer.balance {
                println!("Balance after: {}", balance_line(b));
            }
            print_list("Slip", &answer.print_lines);
        }
        ReceiptCommand::Get { receipt_id } => {
            let co = checkout
                .get_checkout(client.request(gw::GetCheckoutRequest { receipt_id }))
                .await?
                .into_inner()
                .checkout
                .unwrap_or_default();
            println!("Receipt {} ({})", co.receipt_id, state_name(co.state));
            println!(
                "  store {}, terminal {}, customer {}{}",
                or_dash(&co.store_id),
                or_dash(&co.terminal_id),
                or_dash(&co.customer_id),
                if co.offline { ", offline" } else { "" }
            );
            if let Some(hold) = &co.hold {
                println!(
                    "  hold: {} points until {}",
                    hold.points,
                    super::show_timestamp(&hold.expires_at)
                );
            }
            let lines: Vec<BasketLine> = co
                .receipt
                .as_ref()
                .map(|r| r.lines.iter().filter_map(|l| l.line.clone()).collect())
                .unwrap_or_default();
            if let Some(calc) = &co.calculation {
                print_calculation_body(calc, &lines);
            }
            if let Some(receipt) = &co.receipt {
                for r in &receipt.refunds {
                    println!();
                    println!("Refund {}:", r.refund_id);
                    print_refund(r);
                }
            }
        }
    }
    Ok(())
}

fn print_calculation(calc: &gw::Calculation, lines: &[BasketLine]) {
    print_calculation_body(calc, lines);
    if let Some(b) = &calc.balance {
        println!("Balance before: {}", balance_line(b));
    }
}

fn print_calculation_body(calc: &gw::Calculation, lines: &[BasketLine]) {
    let customer = match &calc.customer {
        Some(c) => {
            let name = if c.display_name.is_empty() {
                c.customer_id.clone()
            } else {
                format!("{} [{}]", c.display_name, c.customer_id)
            };
            let phone = if c.phone_masked.is_empty() {
                String::new()
            } else {
                format!(", {}", c.phone_masked)
            };
            let tier = if c.tier_code.is_empty() {
                String::new()
            } else {
                format!(", tier {}", c.tier_code)
            };
            format!("{name}{phone}{tier}")
        }
        None => "anonymous".to_owned(),
    };
    println!(
        "Customer: {customer} · program version {} · {}",
        calc.program_version,
        or_dash(&calc.currency)
    );
    println!();
    let mut table = Table::new([
        "line", "product", "qty", "price", "gross", "discount", "net", "accrued", "redeemed",
        "to pay",
    ]);
    for r in &calc.lines {
        let line = lines.iter().find(|l| l.line_id == r.line_id);
        table.row([
            r.line_id.clone(),
            line.map(|l| l.product_id.clone()).unwrap_or_default(),
            line.map(|l| l.quantity.clone()).unwrap_or_default(),
            line.map(|l| l.unit_price.clone()).unwrap_or_default(),
            r.gross_amount.clone(),
            r.discount.clone(),
            r.net_amount.clone(),
            r.accrual_points.clone(),
            r.redeem_points.clone(),
            r.paid_money.clone(),
        ]);
    }
    let t = calc.totals.clone().unwrap_or_default();
    table.row([
        "total".to_owned(),
        String::new(),
        String::new(),
        String::new(),
        t.gross_amount.clone(),
        t.discount.clone(),
        t.net_amount.clone(),
        t.points_accrued.clone(),
        t.redeem_points.clone(),
        t.paid_money.clone(),
    ]);
    print!("{}", table.render(2));
    println!();
    println!("Totals:");
    println!("  gross            {}", or_dash(&t.gross_amount));
    println!("  discount         {}", or_dash(&t.discount));
    println!("  net              {}", or_dash(&t.net_amount));
    println!(
        "  points redeemed  {} (= {} money)",
        or_dash(&t.redeem_points),
        or_dash(&t.redeem_money)
    );
    println!("  to pay           {}", or_dash(&t.paid_money));
    println!("  points accrued   {}", or_dash(&t.points_accrued));
    println!("  max redeemable   {}", or_dash(&t.max_redeem_points));
    if !calc.applied_promo_codes.is_empty() {
        println!("  promo codes      {}", calc.applied_promo_codes.join(", "));
    }
    let hints: Vec<String> = calc.hints.iter().map(|h| h.message.clone()).collect();
    print_list("Hints", &hints);
    let applied: Vec<String> = calc
        .explanations
        .iter()
        .filter(|e| e.outcome == rules_pb::RuleOutcome::Applied as i32)
        .map(|e| {
            let amount = if e.amount.is_empty() {
                String::new()
            } else {
                format!(" [{}]", e.amount)
            };
            let text = if e.message.is_empty() {
                &e.rule_name
            } else {
                &e.message
            };
            format!("{}{amount}: {text}", e.rule_id)
        })
        .collect();
    print_list("Applied rules", &applied);
    print_list("Display", &calc.display_lines);
}

fn print_refund(refund: &ledger_pb::Refund) {
    let mut table = Table::new([
        "line",
        "qty",
        "amount",
        "cash back",
        "points reversed",
        "points restored",
    ]);
    for l in &refund.lines {
        table.row([
            l.line_id.clone(),
            l.quantity.clone(),
            l.amount.clone(),
            l.cash_amount.clone(),
            l.points_reversed.clone(),
            l.points_restored.clone(),
        ]);
    }
    if !table.is_empty() {
        print!("{}", table.render(2));
    }
    println!("  goods returned   {}", or_dash(&refund.amount));
    println!("  cash to hand back {}", or_dash(&refund.cash_amount));
    println!("  points reversed  {}", or_dash(&refund.points_reversed));
    println!("  points restored  {}", or_dash(&refund.points_restored));
    if !refund.shortfall.is_empty() && refund.shortfall != "0" {
        println!(
            "  shortfall        {} (= {} money; the customer had spent them)",
            refund.shortfall, refund.shortfall_money
        );
    }
    if !refund.negative_balance_created.is_empty() && refund.negative_balance_created != "0" {
        println!("  debt created     {}", refund.negative_balance_created);
    }
    println!(
        "  fully refunded   {}",
        if refund.fully_refunded { "yes" } else { "no" }
    );
}

fn balance_line(b: &ledger_pb::Balance) -> String {
    let mut out = format!("{} available", or_dash(&b.available));
    for (label, value) in [("pending", &b.pending), ("held", &b.held)] {
        if !value.is_empty()
            && Decimal::from_str(value)
                .map(|d| !d.is_zero())
                .unwrap_or(true)
        {
            out.push_str(&format!(", {value} {label}"));
        }
    }
    out
}

fn print_list(title: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    println!("{title}:");
    for item in items {
        println!("  - {item}");
    }
}

fn state_name(state: i32) -> &'static str {
    use gw::CheckoutState as S;
    match S::try_from(state) {
        Ok(S::Calculated) => "CALCULATED",
        Ok(S::Reserved) => "RESERVED",
        Ok(S::Confirmed) => "CONFIRMED",
        Ok(S::Cancelled) => "CANCELLED",
        Ok(S::PartiallyRefunded) => "PARTIALLY_REFUNDED",
        Ok(S::Refunded) => "REFUNDED",
        _ => "UNSPECIFIED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        let l = parse_line(2, "latte:2:180.50:coffee,drinks").unwrap();
        assert_eq!(l.line_id, "2");
        assert_eq!(l.product_id, "latte");
        assert_eq!(l.quantity, "2");
        assert_eq!(l.unit_price, "180.50");
        assert_eq!(l.category_ids, vec!["coffee", "drinks"]);
        assert!(parse_line(1, "latte:0:1").is_err());
        assert!(parse_line(1, "latte:1:-1").is_err());
        assert!(parse_line(1, "latte:1").is_err());
        assert!(parse_line(1, "latte:x:1").is_err());
        let r = parse_refund_line("3:1.5").unwrap();
        assert_eq!((r.line_id.as_str(), r.quantity.as_str()), ("3", "1.5"));
        assert_eq!(parse_refund_line("3").unwrap().quantity, "");
    }

    #[test]
    fn reads_a_lines_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lines.json");
        std::fs::write(
            &path,
            r#"[{"productId": "latte", "unitPrice": "180", "quantity": "1"},
                {"line_id": "x", "product_id": "bun", "unit_price": "60", "quantity": "2", "category_ids": ["sale"]}]"#,
        )
        .unwrap();
        let lines = read_lines_file(&path).unwrap();
        assert_eq!(lines[0].line_id, "1");
        assert_eq!(lines[1].line_id, "x");
        assert_eq!(lines[1].category_ids, vec!["sale"]);
    }
}
