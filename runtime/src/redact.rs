//! Masks personal data and secrets before they reach a log line. Logs carry enough to correlate
//! (the last digits of a phone, the domain of an e-mail, a key's public prefix), never the whole.

/// `+79123456789` → `+7*******789`. Short inputs are masked whole.
pub fn phone(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() < 7 {
        return "*".repeat(chars.len());
    }
    let keep_head = if chars[0] == '+' { 2 } else { 1 };
    let keep_tail = 3;
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i < keep_head || i >= chars.len() - keep_tail {
                *c
            } else {
                '*'
            }
        })
        .collect()
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
        assert_eq!(phone("+79123456789"), "+7*******789");
        assert_eq!(phone("89123456789"), "8*******789");
        assert_eq!(phone("12345"), "*****");
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
