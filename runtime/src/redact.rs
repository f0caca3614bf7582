//! Masks personal data and secrets before they reach a log line. Logs carry enough to correlate
//! (the masked phone of [`phone`], the domain of an e-mail, a key's public prefix), never the whole.

/// The one phone mask of Kopilka, in answers and in logs alike (two masks of one number would
/// reveal more digits together than either alone): "+7 912 ***-**-89" — the country code, the
/// first 3 and last 2 national digits, the rest masked in RU-style groups. National numbers
/// under 8 digits keep no head, under 4 no tail. A value that is not E.164 shows at most its
/// last 2 characters.
pub fn phone(value: &str) -> String {
    match split_e164(value) {
        Some((code, national)) => masked_phone(&code, national),
        None if value.chars().count() >= 6 => {
            let skip = value.chars().count() - 2;
            format!("****-{}", value.chars().skip(skip).collect::<String>())
        }
        None => "****".to_owned(),
    }
}

/// Country code and national significant number of an E.164 value.
fn split_e164(value: &str) -> Option<(String, &str)> {
    let digits = value.strip_prefix('+')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number = phonenumber::parse(None, value).ok()?;
    let code = number.code().value().to_string();
    let national = digits.strip_prefix(code.as_str())?;
    (!national.is_empty()).then_some((code, national))
}

fn masked_phone(code: &str, national: &str) -> String {
    let n = national.len();
    let head = if n >= 8 { 3 } else { 0 };
    let tail = if n >= 4 { 2 } else { 0 };
    let mut parts = vec![format!("+{code}")];
    if head > 0 {
        parts.push(national[..head].to_owned());
    }
    let mut masked = star_groups(n - head - tail);
    if tail > 0 {
        masked.push('-');
        masked.push_str(&national[n - tail..]);
    }
    parts.push(masked);
    parts.join(" ")
}

/// `count` stars grouped like a RU number: pairs, with a leading three when odd ("***-**").
fn star_groups(count: usize) -> String {
    let mut groups = Vec::new();
    let mut left = count;
    if left % 2 == 1 {
        let first = left.min(3);
        groups.push("*".repeat(first));
        left -= first;
    }
    while left > 0 {
        groups.push("**".to_owned());
        left -= 2;
    }
    groups.join("-")
}

/// `ivan.petrov@example.ru` → `i***@example.ru`.
pub fn email(value: &str) -> String {
    match value.split_once('@') {
        Some((local, domain)) => {
            let first = local.chars().next().map(String::from).unwrap_or_default();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

/// Keeps only a secret's first 8 characters (Kopilka keys put their public id there).
pub fn secret(value: &str) -> String {
    let head: String = value.chars().take(8).collect();
    format!("{head}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_keeps_country_and_last_digits() {
        assert_eq!(phone("+79123456789"), "+7 912 ***-**-89");
        assert_eq!(phone("+442079460958"), "+44 207 ***-**-58");
        assert_eq!(phone("89123456789"), "****-89");
        assert_eq!(phone("12345"), "****");
    }

    #[test]
    fn email_keeps_domain_only() {
        assert_eq!(email("ivan.petrov@example.ru"), "i***@example.ru");
        assert_eq!(email("broken"), "***");
    }

    #[test]
    fn secret_keeps_prefix() {
        assert_eq!(secret("kpk_abcdef_0123456789"), "kpk_abcd…");
    }
}
