//! Reading customer identifiers (FEATURES C1–C3): every input form a register or a person sends,
//! normalised to the forms cards-svc stores. Pure: no I/O, no clock.
//!
//! The contract is `kopilka.type.v1.IdentifierKind` / `IdentifierInput` and
//! `kopilka.cards.v1.CardsSettings`. Where those comments are silent this module chooses:
//!
//! - Surrounding whitespace (including a scanner's CR/LF) is ignored for every kind except
//!   Code 128, where only a trailing CR/LF is stripped (the rest is the barcode "as delivered").
//! - Error messages never echo the input: they end up in logs and the input may be a phone.
//! - Auto-detect never reads Code 128 or wallet serials (both need the hint: any short text
//!   would otherwise be one), and 13 digits with a valid EAN-13 check digit are a barcode only,
//!   never also tried as a phone (no national numbering plan has 13-digit subscriber numbers
//!   that a cashier would type).
//! - `ean13_try_without_check_digit` also applies when the merchant has no card-number formats
//!   (then no format can "match", and the merchant set the flag because the printed numbers lack
//!   the check digit); in that case the 12-digit number is the most likely candidate.

use std::collections::HashSet;

use kopilka_proto::cards::{CardChecksum, CardsSettings};
use kopilka_proto::types::{Identifier, IdentifierInput, IdentifierKind};
use kopilka_runtime::validate::Violations;
use phonenumber::country::Id as Region;
use phonenumber::Mode;
use regex::{Regex, RegexBuilder};

/// Longest raw input, in characters (IdentifierInput.raw).
pub(crate) const MAX_RAW_CHARS: usize = 256;
/// Longest normalised card number, Code 128 barcode and wallet serial.
const MAX_VALUE_CHARS: usize = 64;
/// Shortest card number accepted when the merchant has no formats.
const MIN_CARD_CHARS_WITHOUT_FORMATS: usize = 4;
/// Longest card-number pattern (CardNumberFormat.pattern).
const MAX_PATTERN_CHARS: usize = 256;
/// Compiled-size cap for a merchant's pattern, so a setting cannot eat memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest primary account number on a magnetic stripe (ISO/IEC 7813).
const MAX_PAN_DIGITS: usize = 19;
/// UID lengths in hex digits: 4, 7 and 10 bytes.
const UID_HEX_LENGTHS: [usize; 3] = [8, 14, 20];
/// More digits than any dialled phone (15 of E.164 plus a trunk or international prefix).
const MAX_PHONE_DIGITS: usize = 20;
/// Separators allowed between the digits of a phone number.
const PHONE_PUNCTUATION: [char; 7] = [' ', '\t', '-', '.', '/', '(', ')'];
/// A value shown to nobody.
const FULL_MASK: &str = "****";

/// Why an input could not be read. Maps to gRPC INVALID_ARGUMENT with reason INVALID_CHECKSUM /
/// INVALID_IDENTIFIER.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0}")]
    InvalidChecksum(String),
    #[error("{0}")]
    InvalidIdentifier(String),
}

impl ParseError {
    /// The `kopilka.type.v1.ErrorReason` name for the ErrorInfo detail.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::InvalidChecksum(_) => "INVALID_CHECKSUM",
            ParseError::InvalidIdentifier(_) => "INVALID_IDENTIFIER",
        }
    }
}

/// An input [`parse`] or [`storage_form`] refused, with the kind it was read as (the
/// ErrorInfo "kind"): the hint, or what auto-detect took it for; UNSPECIFIED when the hint is
/// unknown or the input fits no kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ReadError {
    pub kind: IdentifierKind,
    pub error: ParseError,
}

impl ReadError {
    pub fn new(kind: IdentifierKind, error: ParseError) -> Self {
        ReadError { kind, error }
    }

    pub fn reason(&self) -> &'static str {
        self.error.reason()
    }
}

fn invalid(message: &str) -> ParseError {
    ParseError::InvalidIdentifier(message.to_owned())
}

fn bad_checksum(message: &str) -> ParseError {
    ParseError::InvalidChecksum(message.to_owned())
}

/// One merchant card-number format, compiled.
#[derive(Debug, Clone)]
struct CardFormat {
    /// The pattern anchored to the whole number.
    regex: Regex,
    checksum: CardChecksum,
}

/// The merchant's reading rules, compiled once from CardsSettings (cache it per merchant).
#[derive(Debug, Clone)]
pub struct Formats {
    region: Region,
    card_formats: Vec<CardFormat>,
    ean13_try_without_check_digit: bool,
}

impl Default for Formats {
    /// Region RU, any 4 to 64 [0-9A-Z] is a card number, no 12-digit EAN-13 retry.
    fn default() -> Self {
        Formats {
            region: Region::RU,
            card_formats: Vec::new(),
            ean13_try_without_check_digit: false,
        }
    }
}

impl Formats {
    /// Validates and compiles. Errors are field violations, paths relative to CardsSettings
    /// under the prefix `at` (e.g. "settings."), all of them at once so an admin fixes
    /// everything in one round.
    ///
    /// The region must be an upper-case ISO 3166-1 alpha-2 code that the phone metadata knows
    /// ("ru" and "" are rejected: the store fills in the "RU" default before this is called).
    /// Patterns must be non-empty, at most 256 characters (LIMIT_EXCEEDED beyond) and compile
    /// as a (RE2-compatible) Rust regex; they are matched against the whole normalised
    /// (upper-case) number.
    pub fn from_settings(s: &CardsSettings, at: &str) -> Result<Formats, Violations> {
        let mut violations = Violations::new();
        let region = parse_region(&s.default_phone_region)
            .map_err(|m| violations.add(format!("{at}default_phone_region"), m))
            .ok();
        let mut card_formats = Vec::with_capacity(s.card_number_formats.len());
        for (i, format) in s.card_number_formats.iter().enumerate() {
            let field = format!("{at}card_number_formats[{i}].pattern");
            let regex = if format.pattern.chars().count() > MAX_PATTERN_CHARS {
                violations.limit(&field, MAX_PATTERN_CHARS, "characters");
                None
            } else {
                compile_pattern(&format.pattern)
                    .map_err(|m| violations.add(field, m))
                    .ok()
            };
            let checksum = CardChecksum::try_from(format.checksum)
                .map_err(|_| {
                    violations.add(
                        format!("{at}card_number_formats[{i}].checksum"),
                        "unknown checksum",
                    )
                })
                .ok();
            if let (Some(regex), Some(checksum)) = (regex, checksum) {
                card_formats.push(CardFormat { regex, checksum });
            }
        }
        match region {
            Some(region) if violations.is_empty() => Ok(Formats {
                region,
                card_formats,
                ean13_try_without_check_digit: s.ean13_try_without_check_digit,
            }),
            _ => Err(violations),
        }
    }
}

/// A phone region the metadata has numbering rules for.
fn parse_region(code: &str) -> Result<Region, String> {
    let known = code.len() == 2
        && code.bytes().all(|b| b.is_ascii_uppercase())
        && phonenumber::metadata::DATABASE.by_id(code).is_some();
    let region = code.parse::<Region>().ok().filter(|_| known);
    region.ok_or_else(|| "must be an upper-case ISO 3166-1 alpha-2 region code, e.g. RU".to_owned())
}

/// Compiles a merchant pattern (of at most [`MAX_PATTERN_CHARS`]) for a full match.
fn compile_pattern(pattern: &str) -> Result<Regex, String> {
    if pattern.is_empty() {
        return Err("required".to_owned());
    }
    // Compiling the bare pattern first guarantees balanced groups, so wrapping it cannot change
    // its meaning ("a)|(b" would otherwise escape the anchors).
    build_regex(pattern)?;
    build_regex(&format!("^(?:{pattern})$"))
}

fn build_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            format!(
                "not a valid regular expression: {}",
                last_line(&e.to_string())
            )
        })
}

/// The regex crate's errors are multi-line drawings; the last line says what is wrong.
fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(text)
}

/// One stored identifier an input may denote.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Candidate {
    pub kind: IdentifierKind,
    pub value: String,
}

impl Candidate {
    fn new(kind: IdentifierKind, value: impl Into<String>) -> Self {
        Candidate {
            kind,
            value: value.into(),
        }
    }
}

/// How an input was read, and the stored identifiers it may denote, most likely first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub input_kind: IdentifierKind,
    pub candidates: Vec<Candidate>,
}

impl Parsed {
    /// An input read as exactly one identifier of its own kind.
    fn single(kind: IdentifierKind, value: String) -> Self {
        Parsed {
            input_kind: kind,
            candidates: vec![Candidate::new(kind, value)],
        }
    }
}

/// Reads `input` (honouring kind_hint; UNSPECIFIED = auto-detect per the proto comment).
///
/// An unknown kind_hint value is InvalidIdentifier. Auto-detect tries, in order: track data
/// ("%" / ";" prefix) as MAGSTRIPE only; a "+"-prefixed number or one with "(" ")" as PHONE
/// only; 13 digits with a valid EAN-13 check digit as BARCODE_EAN13 only; otherwise the
/// candidates CARD_NUMBER, PHONE, CONTACTLESS_UID that read, with input_kind the first one's.
pub fn parse(input: &IdentifierInput, formats: &Formats) -> Result<Parsed, ReadError> {
    let hinted = IdentifierKind::try_from(input.kind_hint);
    check_raw_length(&input.raw).map_err(|e| ReadError::new(hinted.unwrap_or_default(), e))?;
    let hint = hinted
        .map_err(|_| ReadError::new(IdentifierKind::Unspecified, invalid("unknown kind_hint")))?;
    let raw = input.raw.as_str();
    match hint {
        IdentifierKind::Unspecified => return auto_detect(raw, formats),
        IdentifierKind::CardNumber => check_card(raw, formats).map(|v| Parsed::single(hint, v)),
        IdentifierKind::BarcodeEan13 => parse_ean13(raw, formats),
        IdentifierKind::BarcodeCode128 => parse_code128(raw, formats),
        IdentifierKind::Magstripe => parse_magstripe(raw, formats),
        IdentifierKind::ContactlessUid => normalise_uid(raw).map(|v| Parsed::single(hint, v)),
        IdentifierKind::Phone => normalise_phone(raw, formats).map(|v| Parsed::single(hint, v)),
        IdentifierKind::WalletSerial => {
            normalise_wallet_serial(raw).map(|v| Parsed::single(hint, v))
        }
    }
    .map_err(|e| ReadError::new(hint, e))
}

/// The single form to STORE when attaching an identifier (AddIdentifier, CreateCustomer):
/// parse() then the first candidate, except that auto-detect never stores an ambiguous bare
/// number as PHONE unless the input is clearly a phone ("+" prefix or "(" ")"). Such an input
/// whose only reading is a phone is InvalidIdentifier: the caller resends it with kind PHONE.
pub fn storage_form(input: &IdentifierInput, formats: &Formats) -> Result<Candidate, ReadError> {
    let parsed = parse(input, formats)?;
    let auto = input.kind_hint == IdentifierKind::Unspecified as i32;
    let clearly_phone = looks_like_phone(input.raw.trim());
    parsed
        .candidates
        .into_iter()
        .find(|c| !auto || clearly_phone || c.kind != IdentifierKind::Phone)
        .ok_or_else(|| {
            ReadError::new(
                parsed.input_kind,
                invalid("ambiguous number: send it with kind PHONE to attach it as a phone"),
            )
        })
}

fn check_raw_length(raw: &str) -> Result<(), ParseError> {
    if raw.is_empty() || raw.chars().count() > MAX_RAW_CHARS {
        return Err(invalid("the input must be 1 to 256 characters"));
    }
    Ok(())
}

/// Auto-detect (kind_hint UNSPECIFIED), see [`parse`].
fn auto_detect(raw: &str, formats: &Formats) -> Result<Parsed, ReadError> {
    let text = raw.trim();
    if text.starts_with(['%', ';']) {
        return parse_magstripe(text, formats)
            .map_err(|e| ReadError::new(IdentifierKind::Magstripe, e));
    }
    if looks_like_phone(text) {
        let phone =
            normalise_phone(text, formats).map_err(|e| ReadError::new(IdentifierKind::Phone, e))?;
        return Ok(Parsed::single(IdentifierKind::Phone, phone));
    }
    if ean13_holds(text) {
        return Ok(ean13_parsed(text, formats));
    }
    let card = check_card(text, formats);
    let mut candidates = Vec::new();
    if let Ok(number) = &card {
        candidates.push(Candidate::new(IdentifierKind::CardNumber, number.clone()));
    }
    if let Ok(phone) = normalise_phone(text, formats) {
        candidates.push(Candidate::new(IdentifierKind::Phone, phone));
    }
    if let Ok(uid) = normalise_uid(text) {
        candidates.push(Candidate::new(IdentifierKind::ContactlessUid, uid));
    }
    let candidates = dedupe(candidates);
    match candidates.first() {
        Some(first) => Ok(Parsed {
            input_kind: first.kind,
            candidates,
        }),
        None => Err(match card {
            Err(e @ ParseError::InvalidChecksum(_)) => {
                ReadError::new(IdentifierKind::CardNumber, e)
            }
            _ => ReadError::new(
                IdentifierKind::Unspecified,
                invalid("not a card number, phone or contactless UID"),
            ),
        }),
    }
}

/// "+" prefix or phone brackets: a person wrote a phone number, not a card.
fn looks_like_phone(text: &str) -> bool {
    text.starts_with('+') || text.contains(['(', ')'])
}

/// Drops repeated candidates, keeping the first (most likely) position.
fn dedupe(candidates: Vec<Candidate>) -> Vec<Candidate> {
    let mut seen = HashSet::new();
    candidates
        .into_iter()
        .filter(|c| seen.insert(c.clone()))
        .collect()
}

// ---- card numbers ----------------------------------------------------------------------------

/// Removes spaces and dashes and upper-cases; None unless 1 to 64 of [0-9A-Z] remain.
fn normalise_card(raw: &str) -> Option<String> {
    let number: String = raw
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let shaped = !number.is_empty()
        && number.len() <= MAX_VALUE_CHARS
        && number
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    shaped.then_some(number)
}

/// The normalised card number if it is one under the merchant's formats.
///
/// Several formats may match; the number is valid when any matching format's checksum holds,
/// InvalidChecksum when formats matched but every one's check digit failed.
fn check_card(raw: &str, formats: &Formats) -> Result<String, ParseError> {
    let number = normalise_card(raw)
        .ok_or_else(|| invalid("a card number is 1 to 64 letters A-Z or digits"))?;
    if formats.card_formats.is_empty() {
        if number.len() < MIN_CARD_CHARS_WITHOUT_FORMATS {
            return Err(invalid("a card number is 4 to 64 letters A-Z or digits"));
        }
        return Ok(number);
    }
    let mut matched = false;
    for format in formats
        .card_formats
        .iter()
        .filter(|f| f.regex.is_match(&number))
    {
        if checksum_holds(format.checksum, &number) {
            return Ok(number);
        }
        matched = true;
    }
    Err(if matched {
        bad_checksum("the card number's check digit is wrong")
    } else {
        invalid("the card number matches none of the merchant's card-number formats")
    })
}

/// A LUHN or EAN13 checksum fails on anything but digits (and EAN13 on anything but 13 of
/// them): such a format/checksum pair is a merchant misconfiguration, reported as a bad check.
fn checksum_holds(checksum: CardChecksum, number: &str) -> bool {
    match checksum {
        CardChecksum::Unspecified => true,
        CardChecksum::Luhn => luhn_holds(number),
        CardChecksum::Ean13 => ean13_holds(number),
    }
}

/// Luhn (mod 10) over all digits, the last one being the check digit.
fn luhn_holds(number: &str) -> bool {
    if number.len() < 2 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = number
        .bytes()
        .rev()
        .map(|b| u32::from(b - b'0'))
        .enumerate()
        .map(|(i, d)| match (i % 2 == 1, d * 2) {
            (false, _) => d,
            (true, doubled) if doubled > 9 => doubled - 9,
            (true, doubled) => doubled,
        })
        .sum();
    sum.is_multiple_of(10)
}

fn is_digits(text: &str, count: usize) -> bool {
    text.len() == count && text.bytes().all(|b| b.is_ascii_digit())
}

/// Exactly 13 ASCII digits whose last is the EAN-13 check digit.
fn ean13_holds(text: &str) -> bool {
    if !is_digits(text, 13) {
        return false;
    }
    let digits: Vec<u32> = text.bytes().map(|b| u32::from(b - b'0')).collect();
    let sum: u32 = digits[..12]
        .iter()
        .enumerate()
        .map(|(i, d)| if i % 2 == 0 { *d } else { d * 3 })
        .sum();
    (10 - sum % 10) % 10 == digits[12]
}

// ---- barcodes --------------------------------------------------------------------------------

fn parse_ean13(raw: &str, formats: &Formats) -> Result<Parsed, ParseError> {
    let digits = raw.trim();
    if !is_digits(digits, 13) {
        return Err(invalid("an EAN-13 barcode is exactly 13 digits"));
    }
    if !ean13_holds(digits) {
        return Err(bad_checksum("the EAN-13 check digit is wrong"));
    }
    Ok(ean13_parsed(digits, formats))
}

/// Candidates of a verified EAN-13: the 13 digits as a card number if they are one; the first
/// 12 when the merchant asked for it and the 13 fit no format (or there are no formats, where
/// the 12 come first); then the barcode itself.
fn ean13_parsed(digits: &str, formats: &Formats) -> Parsed {
    let full = check_card(digits, formats).ok();
    let retry = formats.ean13_try_without_check_digit
        && (full.is_none() || formats.card_formats.is_empty());
    let short = digits
        .get(..12)
        .filter(|_| retry)
        .and_then(|d| check_card(d, formats).ok());
    let cards = if formats.card_formats.is_empty() {
        [short, full]
    } else {
        [full, short]
    };
    let mut candidates: Vec<Candidate> = cards
        .into_iter()
        .flatten()
        .map(|n| Candidate::new(IdentifierKind::CardNumber, n))
        .collect();
    candidates.push(Candidate::new(IdentifierKind::BarcodeEan13, digits));
    Parsed {
        input_kind: IdentifierKind::BarcodeEan13,
        candidates: dedupe(candidates),
    }
}

/// The Code 128 value as delivered, less the scanner's trailing CR/LF.
fn normalise_code128(raw: &str) -> Result<&str, ParseError> {
    let value = raw.trim_end_matches(['\r', '\n']);
    let printable = value.bytes().all(|b| (0x20..=0x7E).contains(&b));
    if value.is_empty() || value.len() > MAX_VALUE_CHARS || !printable {
        return Err(invalid(
            "a Code 128 barcode is 1 to 64 printable ASCII characters",
        ));
    }
    Ok(value)
}

fn parse_code128(raw: &str, formats: &Formats) -> Result<Parsed, ParseError> {
    let value = normalise_code128(raw)?;
    let mut candidates = Vec::new();
    if let Ok(number) = check_card(value, formats) {
        candidates.push(Candidate::new(IdentifierKind::CardNumber, number));
    }
    candidates.push(Candidate::new(IdentifierKind::BarcodeCode128, value));
    Ok(Parsed {
        input_kind: IdentifierKind::BarcodeCode128,
        candidates,
    })
}

// ---- magnetic stripe -------------------------------------------------------------------------

/// The card numbers found on each track.
#[derive(Default)]
struct Tracks {
    track1: Option<String>,
    track2: Option<String>,
}

fn parse_magstripe(raw: &str, formats: &Formats) -> Result<Parsed, ParseError> {
    let pan = magstripe_pan(raw)?;
    let number = check_card(&pan, formats)?;
    Ok(Parsed {
        input_kind: IdentifierKind::Magstripe,
        candidates: vec![Candidate::new(IdentifierKind::CardNumber, number)],
    })
}

/// Walks the tracks a reader delivered, in any order: "%" track 1, ";" track 2, and a further
/// ";" or "+" block (track 3) that is skipped. One LRC character after each "?" is ignored.
fn magstripe_pan(raw: &str) -> Result<String, ParseError> {
    let mut rest = raw.trim();
    if rest.is_empty() {
        return Err(invalid("no track data"));
    }
    let mut tracks = Tracks::default();
    while let Some(sentinel) = rest.chars().next() {
        let after = &rest[sentinel.len_utf8()..];
        let end = after
            .find('?')
            .ok_or_else(|| invalid("track data without end sentinel"))?;
        let body = &after[..end];
        rest = skip_lrc(&after[end + 1..]);
        match sentinel {
            '%' if tracks.track1.is_none() => tracks.track1 = Some(track1_pan(body)?),
            '%' => return Err(invalid("track data with two track 1")),
            ';' if tracks.track2.is_none() => tracks.track2 = Some(track2_pan(body)?),
            ';' | '+' => {}
            _ => return Err(invalid("track data must start with % or ;")),
        }
    }
    pick_pan(tracks)
}

/// After a track's "?": an optional LRC character (anything but a start sentinel), then line
/// breaks before the next track.
fn skip_lrc(after: &str) -> &str {
    let mut chars = after.chars();
    match chars.next() {
        Some(c) if !matches!(c, '%' | ';' | '+') => chars.as_str().trim_start(),
        _ => after.trim_start(),
    }
}

/// Track 1 body: a format-code letter A-Z, the PAN, "^", then name and data.
fn track1_pan(body: &str) -> Result<String, ParseError> {
    let mut chars = body.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_uppercase()) {
        return Err(invalid("track 1 without format code"));
    }
    let (pan, _) = chars
        .as_str()
        .split_once('^')
        .ok_or_else(|| invalid("track 1 without field separator"))?;
    check_pan(pan)
}

/// Track 2 body: the PAN, then "=" and data, or the PAN alone.
fn track2_pan(body: &str) -> Result<String, ParseError> {
    let pan = body.split_once('=').map_or(body, |(pan, _)| pan);
    check_pan(pan)
}

fn check_pan(pan: &str) -> Result<String, ParseError> {
    let shaped =
        !pan.is_empty() && pan.len() <= MAX_PAN_DIGITS && pan.bytes().all(|b| b.is_ascii_digit());
    if !shaped {
        return Err(invalid("the track's card number must be 1 to 19 digits"));
    }
    Ok(pan.to_owned())
}

/// Track 2 is preferred (numeric, better error detection); both present must agree.
fn pick_pan(tracks: Tracks) -> Result<String, ParseError> {
    match (tracks.track1, tracks.track2) {
        (Some(t1), Some(t2)) if t1 != t2 => {
            Err(invalid("track 1 and track 2 carry different card numbers"))
        }
        (_, Some(pan)) | (Some(pan), None) => Ok(pan),
        (None, None) => Err(invalid("track data without track 1 or track 2")),
    }
}

// ---- contactless, phone, wallet --------------------------------------------------------------

/// Upper-case hex without separators; 4, 7 or 10 bytes.
fn normalise_uid(raw: &str) -> Result<String, ParseError> {
    let hex: String = raw
        .trim()
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | ' '))
        .collect();
    let shaped = UID_HEX_LENGTHS.contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if !shaped {
        return Err(invalid("a contactless UID is 4, 7 or 10 bytes of hex"));
    }
    Ok(hex.to_ascii_uppercase())
}

/// Phone in any notation -> E.164 with the region ("+79123456789").
///
/// Accepted: an optional leading "+", ASCII digits, and the separators space, tab, "-", ".",
/// "/", "(", ")". Everything else is InvalidIdentifier, including non-ASCII digits (which
/// libphonenumber would otherwise fold to ASCII), letters (it would read "1-800-FLOWERS" as a
/// vanity number) and extensions. Without "+", the merchant's region applies; for RU a leading
/// "8" (trunk prefix) or "7" (country code) before a 10-digit number is understood, as is the
/// "8 10" international prefix. The result must be a *valid* number for its region.
pub fn normalise_phone(raw: &str, formats: &Formats) -> Result<String, ParseError> {
    check_raw_length(raw)?;
    let dialable = dialable_phone(raw)?;
    let number = phonenumber::parse(Some(formats.region), &dialable)
        .map_err(|_| invalid("not a phone number"))?;
    if !number.is_valid() {
        return Err(invalid("not a valid phone number"));
    }
    Ok(number.format().mode(Mode::E164).to_string())
}

/// "+" and the digits, or the digits alone, without punctuation.
fn dialable_phone(raw: &str) -> Result<String, ParseError> {
    let text = raw.trim();
    let (plus, rest) = match text.strip_prefix('+') {
        Some(rest) => ("+", rest),
        None => ("", text),
    };
    let mut digits = String::with_capacity(rest.len());
    for c in rest.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else if !PHONE_PUNCTUATION.contains(&c) {
            return Err(invalid(
                "a phone number has only ASCII digits, a leading + and separators",
            ));
        }
    }
    if digits.is_empty() || digits.len() > MAX_PHONE_DIGITS {
        return Err(invalid("not a phone number"));
    }
    Ok(format!("{plus}{digits}"))
}

/// Exact value less surrounding whitespace; control characters are refused (they are never
/// part of a pass serial and would only come from a broken client).
fn normalise_wallet_serial(raw: &str) -> Result<String, ParseError> {
    let serial = raw.trim();
    let count = serial.chars().count();
    if count == 0 || count > MAX_VALUE_CHARS || serial.chars().any(char::is_control) {
        return Err(invalid("a wallet serial is 1 to 64 characters"));
    }
    Ok(serial.to_owned())
}

// ---- display ---------------------------------------------------------------------------------

/// A masked form safe for logs and cashiers.
///
/// - PHONE: "+7 912 ***-**-89", Kopilka's one phone mask (`kopilka_runtime::redact::phone`).
/// - CONTACTLESS_UID: "****5E80" (last 4 hex).
/// - Card numbers, barcodes, wallet serials (and anything else): "**** 1234", the last 4
///   characters but never more than half of the value; 4 characters or fewer: "****".
pub fn display(kind: IdentifierKind, value: &str) -> String {
    match kind {
        IdentifierKind::Phone => mask_phone(value),
        IdentifierKind::ContactlessUid => mask_uid(value),
        IdentifierKind::Unspecified => FULL_MASK.to_owned(),
        _ => mask_tail(value),
    }
}

/// The last `count` characters.
fn tail(value: &str, count: usize) -> String {
    let skip = value.chars().count().saturating_sub(count);
    value.chars().skip(skip).collect()
}

fn mask_tail(value: &str) -> String {
    let len = value.chars().count();
    if len <= 4 {
        return FULL_MASK.to_owned();
    }
    format!("{FULL_MASK} {}", tail(value, (len / 2).min(4)))
}

fn mask_uid(value: &str) -> String {
    if value.chars().count() <= 4 {
        return FULL_MASK.to_owned();
    }
    format!("{FULL_MASK}{}", tail(value, 4))
}

fn mask_phone(value: &str) -> String {
    kopilka_runtime::redact::phone(value)
}

/// Builds the proto Identifier (kind, value, display).
pub fn to_proto(c: &Candidate) -> Identifier {
    Identifier {
        kind: c.kind as i32,
        value: c.value.clone(),
        display: display(c.kind, &c.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kopilka_proto::cards::CardNumberFormat;
    use IdentifierKind::{
        BarcodeCode128 as Code128, BarcodeEan13 as Ean13, CardNumber as Card,
        ContactlessUid as Uid, Magstripe as Mag, Phone, Unspecified as Auto,
        WalletSerial as Wallet,
    };

    /// Expected outcome of one row: input kind and candidates, or an error reason.
    type Expect = Result<(IdentifierKind, Vec<(IdentifierKind, &'static str)>), &'static str>;

    const CHECKSUM: &str = "INVALID_CHECKSUM";
    const INVALID: &str = "INVALID_IDENTIFIER";

    fn format(pattern: &str, checksum: CardChecksum) -> CardNumberFormat {
        CardNumberFormat {
            name: "test".to_owned(),
            pattern: pattern.to_owned(),
            checksum: checksum as i32,
        }
    }

    fn settings(region: &str, formats: Vec<CardNumberFormat>, try12: bool) -> CardsSettings {
        CardsSettings {
            default_phone_region: region.to_owned(),
            card_number_formats: formats,
            ean13_try_without_check_digit: try12,
            ..Default::default()
        }
    }

    fn compiled(s: &CardsSettings) -> Formats {
        match Formats::from_settings(s, "") {
            Ok(f) => f,
            Err(v) => panic!("settings rejected: {v:?}"),
        }
    }

    /// "plastic": 16 digits starting 77 with Luhn; "paper": two letters and four digits.
    fn luhn_formats() -> Formats {
        compiled(&settings(
            "RU",
            vec![
                format("^77[0-9]{14}$", CardChecksum::Luhn),
                format("[A-Z]{2}[0-9]{4}", CardChecksum::Unspecified),
            ],
            false,
        ))
    }

    /// EAN-13 card numbers starting with 2.
    fn ean_formats() -> Formats {
        compiled(&settings(
            "RU",
            vec![format("2[0-9]{12}", CardChecksum::Ean13)],
            false,
        ))
    }

    /// Printed numbers are 12 digits starting 29 with Luhn; barcodes add an EAN-13 check digit.
    fn try12_formats() -> Formats {
        compiled(&settings(
            "RU",
            vec![format("29[0-9]{10}", CardChecksum::Luhn)],
            true,
        ))
    }

    fn try12_no_formats() -> Formats {
        compiled(&settings("RU", vec![], true))
    }

    fn gb() -> Formats {
        compiled(&settings("GB", vec![], false))
    }

    fn input(raw: &str, hint: IdentifierKind) -> IdentifierInput {
        IdentifierInput {
            raw: raw.to_owned(),
            kind_hint: hint as i32,
        }
    }

    fn outcome(
        result: Result<Parsed, ReadError>,
    ) -> Result<(IdentifierKind, Vec<Candidate>), &'static str> {
        result
            .map(|p| (p.input_kind, p.candidates))
            .map_err(|e| e.reason())
    }

    fn expected(expect: &Expect) -> Result<(IdentifierKind, Vec<Candidate>), &'static str> {
        expect.clone().map(|(kind, cands)| {
            let cands = cands
                .into_iter()
                .map(|(k, v)| Candidate::new(k, v))
                .collect();
            (kind, cands)
        })
    }

    fn check_rows(formats: &Formats, rows: &[(&str, IdentifierKind, Expect)]) {
        let mut failures = Vec::new();
        for (raw, hint, expect) in rows {
            let got = outcome(parse(&input(raw, *hint), formats));
            if got != expected(expect) {
                failures.push(format!("{raw:?} as {hint:?}: got {got:?}, want {expect:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    fn ok(kind: IdentifierKind, cands: &[(IdentifierKind, &'static str)]) -> Expect {
        Ok((kind, cands.to_vec()))
    }

    fn one(kind: IdentifierKind, value: &'static str) -> Expect {
        Ok((kind, vec![(kind, value)]))
    }

    // ---- ParseError, Formats ---------------------------------------------------------------

    #[test]
    fn reasons() {
        assert_eq!(invalid("x").reason(), "INVALID_IDENTIFIER");
        assert_eq!(bad_checksum("x").reason(), "INVALID_CHECKSUM");
        assert_eq!(invalid("message").to_string(), "message");
    }

    #[test]
    fn default_formats_match_default_settings() {
        let d = Formats::default();
        let s = compiled(&settings("RU", vec![], false));
        assert_eq!(d.region, s.region);
        assert!(d.card_formats.is_empty() && !d.ean13_try_without_check_digit);
    }

    #[test]
    fn from_settings_accepts() {
        let long_ok = "0{1}".repeat(64);
        assert_eq!(long_ok.len(), 256);
        let rows: Vec<CardsSettings> = vec![
            settings("RU", vec![], false),
            settings("GB", vec![], true),
            settings(
                "US",
                vec![format("^77[0-9]{11}$", CardChecksum::Luhn)],
                false,
            ),
            settings(
                "KZ",
                vec![format(&long_ok, CardChecksum::Unspecified)],
                false,
            ),
            settings(
                "DE",
                vec![
                    format("[0-9]{13}", CardChecksum::Ean13),
                    format("(?i)[a-z]{3}\\d+", CardChecksum::Unspecified),
                ],
                false,
            ),
        ];
        for s in &rows {
            assert!(Formats::from_settings(s, "").is_ok(), "{s:?}");
        }
    }

    #[test]
    fn from_settings_violations() {
        let too_long = "0{1}".repeat(64) + "0";
        let rows: Vec<(CardsSettings, Vec<&str>)> = vec![
            (settings("", vec![], false), vec!["default_phone_region"]),
            (settings("XX", vec![], false), vec!["default_phone_region"]),
            (settings("ru", vec![], false), vec!["default_phone_region"]),
            (settings("RUS", vec![], false), vec!["default_phone_region"]),
            (settings(" RU", vec![], false), vec!["default_phone_region"]),
            (settings("001", vec![], false), vec!["default_phone_region"]),
            (
                settings("RU", vec![format("(", CardChecksum::Luhn)], false),
                vec!["card_number_formats[0].pattern"],
            ),
            (
                settings("RU", vec![format("", CardChecksum::Luhn)], false),
                vec!["card_number_formats[0].pattern"],
            ),
            (
                settings("RU", vec![format(&too_long, CardChecksum::Luhn)], false),
                vec!["card_number_formats[0].pattern"],
            ),
            (
                settings(
                    "RU",
                    vec![format("a)|(b", CardChecksum::Unspecified)],
                    false,
                ),
                vec!["card_number_formats[0].pattern"],
            ),
            (
                settings(
                    "RU",
                    vec![format("(?:[0-9]{1000}){1000}", CardChecksum::Unspecified)],
                    false,
                ),
                vec!["card_number_formats[0].pattern"],
            ),
            (
                settings(
                    "RU",
                    vec![
                        format("[0-9]+", CardChecksum::Luhn),
                        CardNumberFormat {
                            name: "odd".to_owned(),
                            pattern: "[0-9]+".to_owned(),
                            checksum: 7,
                        },
                    ],
                    false,
                ),
                vec!["card_number_formats[1].checksum"],
            ),
            (
                settings(
                    "XX",
                    vec![
                        format("[", CardChecksum::Luhn),
                        format("ok", CardChecksum::Luhn),
                        CardNumberFormat {
                            name: "both".to_owned(),
                            pattern: "(".to_owned(),
                            checksum: -1,
                        },
                    ],
                    false,
                ),
                vec![
                    "default_phone_region",
                    "card_number_formats[0].pattern",
                    "card_number_formats[2].pattern",
                    "card_number_formats[2].checksum",
                ],
            ),
        ];
        for (s, paths) in rows {
            match Formats::from_settings(&s, "") {
                Ok(_) => panic!("accepted {s:?}"),
                Err(violations) => {
                    let got: Vec<&str> = violations
                        .fields()
                        .iter()
                        .map(|(p, _)| p.as_str())
                        .collect();
                    assert_eq!(got, paths, "{s:?}");
                    assert!(violations
                        .fields()
                        .iter()
                        .all(|(_, m)| !m.is_empty() && !m.contains('\n')));
                }
            }
        }
        // Too long a pattern is a size limit, under the prefix the caller names.
        let long = settings("RU", vec![format(&too_long, CardChecksum::Luhn)], false);
        let violations = Formats::from_settings(&long, "settings.").unwrap_err();
        assert_eq!(violations.reason(), "LIMIT_EXCEEDED");
        assert_eq!(
            violations.fields()[0].0,
            "settings.card_number_formats[0].pattern"
        );
        let bad = settings("XX", vec![format("(", CardChecksum::Luhn)], false);
        let violations = Formats::from_settings(&bad, "settings.").unwrap_err();
        assert_eq!(violations.reason(), "VALIDATION_FAILED");
        assert_eq!(
            violations
                .fields()
                .iter()
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>(),
            [
                "settings.default_phone_region",
                "settings.card_number_formats[0].pattern"
            ]
        );
    }

    #[test]
    fn patterns_match_the_whole_number() {
        let f = compiled(&settings(
            "RU",
            vec![format("77|88", CardChecksum::Unspecified)],
            false,
        ));
        let rows = [
            ("77", Card, one(Card, "77")),
            ("88", Card, one(Card, "88")),
            ("7788", Card, Err(INVALID)),
            ("177", Card, Err(INVALID)),
            ("8", Card, Err(INVALID)),
        ];
        check_rows(&f, &rows);
    }

    // ---- checksums ------------------------------------------------------------------------

    #[test]
    fn luhn_rows() {
        let rows = [
            ("7700000000000123", true),
            ("7712345678901235", true),
            ("41111111111114", true),
            ("4111111111111111", true),
            ("79927398713", true),
            ("00", true),
            ("7700000000000124", false),
            ("79927398710", false),
            ("0", false),
            ("", false),
            ("7A00000000000123", false),
            ("١٢", false),
        ];
        for (number, want) in rows {
            assert_eq!(luhn_holds(number), want, "{number:?}");
        }
    }

    #[test]
    fn ean13_rows() {
        let rows = [
            ("4600000000008", true),
            ("4601234567893", true),
            ("2000000123455", true),
            ("1234567890128", true),
            ("9999999999994", true),
            ("0000000000000", true),
            ("4600000000009", false),
            ("4601234567890", false),
            ("460000000000", false),
            ("46000000000080", false),
            ("460000000000A", false),
            ("460000000000８", false),
            ("", false),
        ];
        for (code, want) in rows {
            assert_eq!(ean13_holds(code), want, "{code:?}");
        }
    }

    // ---- card numbers ----------------------------------------------------------------------

    #[test]
    fn card_numbers_without_formats() {
        let sixty_four: &'static str =
            "1234567890123456789012345678901234567890123456789012345678901234";
        let sixty_five: &'static str =
            "12345678901234567890123456789012345678901234567890123456789012345";
        let rows = [
            ("1234 5678-9012", Card, one(Card, "123456789012")),
            ("ab12", Card, one(Card, "AB12")),
            (" ab-cd \r\n", Card, one(Card, "ABCD")),
            ("000123", Card, one(Card, "000123")),
            (sixty_four, Card, one(Card, sixty_four)),
            (sixty_five, Card, Err(INVALID)),
            ("abc", Card, Err(INVALID)),
            ("12_34", Card, Err(INVALID)),
            ("1234.5678", Card, Err(INVALID)),
            ("１２３４", Card, Err(INVALID)),
            ("ÄBCD", Card, Err(INVALID)),
            ("  ", Card, Err(INVALID)),
            ("- -", Card, Err(INVALID)),
        ];
        check_rows(&Formats::default(), &rows);
    }

    #[test]
    fn card_numbers_with_formats() {
        let rows = [
            ("7700 0000 0000 0123", Card, one(Card, "7700000000000123")),
            ("7712-3456-7890-1235", Card, one(Card, "7712345678901235")),
            ("7700000000000124", Card, Err(CHECKSUM)),
            ("7712345678901234", Card, Err(CHECKSUM)),
            ("770000000000012", Card, Err(INVALID)),
            ("ab-1234", Card, one(Card, "AB1234")),
            ("AB12345", Card, Err(INVALID)),
            ("12345678", Card, Err(INVALID)),
            ("1", Card, Err(INVALID)),
        ];
        check_rows(&luhn_formats(), &rows);
    }

    #[test]
    fn short_card_numbers_fit_a_format() {
        let f = compiled(&settings(
            "RU",
            vec![format("[0-9]{1,3}", CardChecksum::Unspecified)],
            false,
        ));
        let rows = [
            ("7", Card, one(Card, "7")),
            ("123", Card, one(Card, "123")),
            ("1234", Card, Err(INVALID)),
        ];
        check_rows(&f, &rows);
    }

    #[test]
    fn any_matching_format_with_a_holding_checksum_wins() {
        let f = compiled(&settings(
            "RU",
            vec![
                format("[0-9]{16}", CardChecksum::Luhn),
                format("99[0-9]{14}", CardChecksum::Unspecified),
                format("[A-Z0-9]{4}", CardChecksum::Luhn),
                format("[0-9]{12}", CardChecksum::Ean13),
            ],
            false,
        ));
        let rows = [
            ("7700000000000123", Card, one(Card, "7700000000000123")),
            ("7700000000000124", Card, Err(CHECKSUM)),
            ("9900000000000124", Card, one(Card, "9900000000000124")),
            ("AB12", Card, Err(CHECKSUM)),
            ("0000", Card, one(Card, "0000")),
            ("123456789012", Card, Err(CHECKSUM)),
        ];
        check_rows(&f, &rows);
    }

    // ---- EAN-13 ----------------------------------------------------------------------------

    #[test]
    fn ean13_with_hint() {
        let rows = [
            (
                "4600000000008",
                Ean13,
                ok(Ean13, &[(Card, "4600000000008"), (Ean13, "4600000000008")]),
            ),
            (
                " 4601234567893\r\n",
                Ean13,
                ok(Ean13, &[(Card, "4601234567893"), (Ean13, "4601234567893")]),
            ),
            ("4600000000009", Ean13, Err(CHECKSUM)),
            ("4601234567890", Ean13, Err(CHECKSUM)),
            ("460000000000", Ean13, Err(INVALID)),
            ("46000000000080", Ean13, Err(INVALID)),
            ("4600-0000-0000-8", Ean13, Err(INVALID)),
            ("460000000000８", Ean13, Err(INVALID)),
            ("46000000000O8", Ean13, Err(INVALID)),
        ];
        check_rows(&Formats::default(), &rows);
    }

    #[test]
    fn ean13_against_formats() {
        let rows = [
            (
                "2000000123455",
                Ean13,
                ok(Ean13, &[(Card, "2000000123455"), (Ean13, "2000000123455")]),
            ),
            ("4600000000008", Ean13, one(Ean13, "4600000000008")),
            ("2000000123456", Ean13, Err(CHECKSUM)),
            ("2000000123456", Card, Err(CHECKSUM)),
            (
                "2000000123455",
                Auto,
                ok(Ean13, &[(Card, "2000000123455"), (Ean13, "2000000123455")]),
            ),
            ("4600000000008", Auto, one(Ean13, "4600000000008")),
        ];
        check_rows(&ean_formats(), &rows);
    }

    #[test]
    fn ean13_without_check_digit() {
        let rows = [
            (
                "2900000000490",
                Ean13,
                ok(Ean13, &[(Card, "290000000049"), (Ean13, "2900000000490")]),
            ),
            (
                "2900000000490",
                Auto,
                ok(Ean13, &[(Card, "290000000049"), (Ean13, "2900000000490")]),
            ),
            ("2900000000421", Ean13, one(Ean13, "2900000000421")),
            ("4600000000008", Ean13, one(Ean13, "4600000000008")),
            ("290000000049", Card, one(Card, "290000000049")),
            ("290000000042", Card, Err(CHECKSUM)),
        ];
        check_rows(&try12_formats(), &rows);
        let flag_off = compiled(&settings(
            "RU",
            vec![format("29[0-9]{10}", CardChecksum::Luhn)],
            false,
        ));
        check_rows(
            &flag_off,
            &[("2900000000490", Ean13, one(Ean13, "2900000000490"))],
        );
        let both = compiled(&settings(
            "RU",
            vec![format("[0-9]{12,13}", CardChecksum::Unspecified)],
            true,
        ));
        check_rows(
            &both,
            &[(
                "4600000000008",
                Ean13,
                ok(Ean13, &[(Card, "4600000000008"), (Ean13, "4600000000008")]),
            )],
        );
    }

    #[test]
    fn ean13_without_check_digit_and_no_formats() {
        let rows = [(
            "4600000000008",
            Ean13,
            ok(
                Ean13,
                &[
                    (Card, "460000000000"),
                    (Card, "4600000000008"),
                    (Ean13, "4600000000008"),
                ],
            ),
        )];
        check_rows(&try12_no_formats(), &rows);
    }

    // ---- Code 128 --------------------------------------------------------------------------

    #[test]
    fn code128() {
        let sixty_five = "x".repeat(65);
        let sixty_four: &'static str =
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
        let rows = [
            (
                "ABC-123\r\n",
                Code128,
                ok(Code128, &[(Card, "ABC123"), (Code128, "ABC-123")]),
            ),
            (
                "abc 123\n",
                Code128,
                ok(Code128, &[(Card, "ABC123"), (Code128, "abc 123")]),
            ),
            ("a@b", Code128, one(Code128, "a@b")),
            ("  x y ", Code128, one(Code128, "  x y ")),
            ("~", Code128, one(Code128, "~")),
            (
                sixty_four,
                Code128,
                ok(
                    Code128,
                    &[
                        (
                            Card,
                            "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
                        ),
                        (Code128, sixty_four),
                    ],
                ),
            ),
            (&sixty_five, Code128, Err(INVALID)),
            ("abc\tdef", Code128, Err(INVALID)),
            ("Привет", Code128, Err(INVALID)),
            ("\r\n", Code128, Err(INVALID)),
            ("a\u{7f}", Code128, Err(INVALID)),
        ];
        check_rows(&Formats::default(), &rows);
        let with_formats = [
            (
                "AB-1234",
                Code128,
                ok(Code128, &[(Card, "AB1234"), (Code128, "AB-1234")]),
            ),
            ("ABC-123", Code128, one(Code128, "ABC-123")),
            (
                "7700000000000124",
                Code128,
                one(Code128, "7700000000000124"),
            ),
        ];
        check_rows(&luhn_formats(), &with_formats);
    }

    // ---- magnetic stripe -------------------------------------------------------------------

    #[test]
    fn magstripe_reads() {
        const PAN: &str = "1234567890123";
        let card = || ok(Mag, &[(Card, PAN)]);
        let rows = [
            "%B1234567890123^DOE/JOHN^2512101?",
            ";1234567890123=25121010000?",
            ";1234567890123?",
            "%B1234567890123^DOE/JOHN^2512?;1234567890123=2512?",
            "%B1234567890123^DOE/JOHN^2512?X;1234567890123=2512?Y\r\n",
            "%B1234567890123^DOE/JOHN^2512?\r\n;1234567890123=2512?\r\n",
            ";1234567890123=2512?%B1234567890123^DOE/JOHN^2512?",
            ";1234567890123=2512?;0112345?",
            ";1234567890123=2512?+0112345?",
            "  ;1234567890123=?  ",
            "%Z1234567890123^^?",
        ];
        for hint in [Mag, Auto] {
            let rows: Vec<_> = rows.iter().map(|raw| (*raw, hint, card())).collect();
            check_rows(&Formats::default(), &rows);
        }
        check_rows(
            &Formats::default(),
            &[
                (
                    "%M5550001234^LOYALTY^?",
                    Mag,
                    ok(Mag, &[(Card, "5550001234")]),
                ),
                (
                    ";1234567890123456789=?",
                    Mag,
                    ok(Mag, &[(Card, "1234567890123456789")]),
                ),
            ],
        );
    }

    #[test]
    fn magstripe_garbage() {
        let rows = [
            "%B^^?",
            ";abc=?",
            "hello",
            "%B1234",
            "%B12A4567890123^DOE^2512?",
            "%b1234567890123^DOE^2512?",
            "%1234567890123^DOE^2512?",
            "%B1234567890123?",
            ";=2512?",
            ";?",
            ";",
            "%",
            "?",
            ";1234567890123=2512",
            ";12345678901234567890=2512?",
            "%B12345678901234567890^X^?",
            "%B1234567890123^A^1?;9999567890123=2512?",
            "%B1234567890123^A^1?%B1234567890123^A^1?",
            ";1234567890123=2512?garbage",
            "+0112345?",
            ";1234 5678=2512?",
            ";١٢٣٤٥٦٧٨٩=?",
            ";123?",
        ];
        for hint in [Mag, Auto] {
            let rows: Vec<_> = rows
                .iter()
                .filter(|raw| hint == Mag || raw.starts_with(['%', ';']))
                .map(|raw| (*raw, hint, Err(INVALID)))
                .collect();
            check_rows(&Formats::default(), &rows);
        }
    }

    #[test]
    fn magstripe_pan_against_formats() {
        let rows = [
            (
                ";7700000000000123=2512?",
                Mag,
                ok(Mag, &[(Card, "7700000000000123")]),
            ),
            (
                "%B7700000000000123^DOE^2512?",
                Auto,
                ok(Mag, &[(Card, "7700000000000123")]),
            ),
            (";7700000000000124=2512?", Mag, Err(CHECKSUM)),
            (";7700000000000124=2512?", Auto, Err(CHECKSUM)),
            (";1234567890123=2512?", Mag, Err(INVALID)),
        ];
        check_rows(&luhn_formats(), &rows);
    }

    // ---- contactless -----------------------------------------------------------------------

    #[test]
    fn contactless_uids() {
        let rows = [
            ("04A224B2C35E80", Uid, one(Uid, "04A224B2C35E80")),
            ("04:a2:24:b2:c3:5e:80", Uid, one(Uid, "04A224B2C35E80")),
            ("04-A2-24-B2-C3-5E-80", Uid, one(Uid, "04A224B2C35E80")),
            ("04 a2 24 b2 c3 5e 80", Uid, one(Uid, "04A224B2C35E80")),
            (" 04a224b2c35e80\n", Uid, one(Uid, "04A224B2C35E80")),
            ("DEADBEEF", Uid, one(Uid, "DEADBEEF")),
            ("de:ad:be:ef", Uid, one(Uid, "DEADBEEF")),
            (
                "0102030405060708090a",
                Uid,
                one(Uid, "0102030405060708090A"),
            ),
            (
                "01:02:03:04:05:06:07:08:09:0A",
                Uid,
                one(Uid, "0102030405060708090A"),
            ),
            ("DEADBE", Uid, Err(INVALID)),
            ("DEADBEEF00", Uid, Err(INVALID)),
            ("04A224B2C35E", Uid, Err(INVALID)),
            ("04A224B2C35E8", Uid, Err(INVALID)),
            ("0102030405060708090A0B", Uid, Err(INVALID)),
            ("GGADBEEF", Uid, Err(INVALID)),
            ("04_A2_24_B2", Uid, Err(INVALID)),
            ("ＤＥＡＤＢＥＥＦ", Uid, Err(INVALID)),
            ("::::", Uid, Err(INVALID)),
        ];
        check_rows(&Formats::default(), &rows);
    }

    // ---- phones ----------------------------------------------------------------------------

    #[test]
    fn russian_phone_notations() {
        let rows = [
            "8 (912) 345-67-89",
            "+7 912 345 67 89",
            "9123456789",
            "89123456789",
            "+7(912)345-67-89",
            "7 912 345-67-89",
            "79123456789",
            "+79123456789",
            "8-912-345-67-89",
            "8.912.345.67.89",
            "8 912 345 67 89",
            "(912) 345-67-89",
            "+ 7 912 3456789",
            " +79123456789\r\n",
        ];
        let f = Formats::default();
        for raw in rows {
            assert_eq!(
                normalise_phone(raw, &f),
                Ok("+79123456789".to_owned()),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn foreign_phones() {
        let rows = [
            ("+44 20 7946 0958", "+442079460958"),
            ("+1 202-555-0143", "+12025550143"),
            ("+49 151 23456789", "+4915123456789"),
            ("+39 02 1234 5678", "+390212345678"),
            ("+380 50 123 4567", "+380501234567"),
            ("+7 701 234 5678", "+77012345678"),
            ("8 10 44 20 7946 0958", "+442079460958"),
            ("8 (495) 123-45-67", "+74951234567"),
        ];
        let f = Formats::default();
        for (raw, want) in rows {
            assert_eq!(normalise_phone(raw, &f), Ok(want.to_owned()), "{raw:?}");
        }
        let gb_rows = [
            ("020 7946 0958", "+442079460958"),
            ("+79123456789", "+79123456789"),
        ];
        for (raw, want) in gb_rows {
            assert_eq!(
                normalise_phone(raw, &gb()),
                Ok(want.to_owned()),
                "GB {raw:?}"
            );
        }
    }

    #[test]
    fn bad_phones() {
        let long = "1".repeat(257);
        let rows = [
            "",
            "   ",
            "+",
            "8",
            "8123",
            "912345678",
            "+7 912 345 67",
            "8 912 ABC 67 89",
            "1-800-FLOWERS",
            "٩١٢٣٤٥٦٧٨٩",
            "９１２３４５６７８９",
            "8 ９12 345 67 89",
            "++79123456789",
            "+7 912 345 67 89 ext. 12",
            "8 912 345 67 89#",
            "+7 (000) 000-00-00",
            "+999 123456789",
            "+7 912 + 345 67 89",
            "1234567890123456789012",
            "4600000000008",
            long.as_str(),
        ];
        let f = Formats::default();
        for raw in rows {
            assert_eq!(
                normalise_phone(raw, &f).map_err(|e| e.reason()),
                Err(INVALID),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn phones_through_parse() {
        let rows = [
            ("8 (912) 345-67-89", Phone, one(Phone, "+79123456789")),
            ("9123456789", Phone, one(Phone, "+79123456789")),
            ("٩١٢٣٤٥٦٧٨٩", Phone, Err(INVALID)),
            ("hello", Phone, Err(INVALID)),
        ];
        check_rows(&Formats::default(), &rows);
    }

    // ---- wallet serials, raw limits, hints -------------------------------------------------

    #[test]
    fn wallet_serials() {
        let sixty_four: &'static str =
            "pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp";
        let sixty_five = "p".repeat(65);
        let rows = [
            ("  pass-123  ", Wallet, one(Wallet, "pass-123")),
            (
                "E621E1F8-C36C-495A-93FC-0C247A3E6E5F",
                Wallet,
                one(Wallet, "E621E1F8-C36C-495A-93FC-0C247A3E6E5F"),
            ),
            ("AbC", Wallet, one(Wallet, "AbC")),
            ("Ünï côdé", Wallet, one(Wallet, "Ünï côdé")),
            (sixty_four, Wallet, one(Wallet, sixty_four)),
            (&sixty_five, Wallet, Err(INVALID)),
            ("   ", Wallet, Err(INVALID)),
            ("a\u{0}b", Wallet, Err(INVALID)),
        ];
        check_rows(&Formats::default(), &rows);
    }

    #[test]
    fn raw_length_and_unknown_hint() {
        let at_limit = " ".repeat(240) + "1234";
        let over = " ".repeat(253) + "1234";
        let rows = [
            ("", Auto, Err(INVALID)),
            ("", Card, Err(INVALID)),
            ("", Wallet, Err(INVALID)),
            (at_limit.as_str(), Card, one(Card, "1234")),
            (over.as_str(), Card, Err(INVALID)),
            (over.as_str(), Auto, Err(INVALID)),
        ];
        check_rows(&Formats::default(), &rows);
        let unknown = IdentifierInput {
            raw: "1234".to_owned(),
            kind_hint: 99,
        };
        assert_eq!(
            parse(&unknown, &Formats::default()).map_err(|e| e.reason()),
            Err(INVALID)
        );
        let multibyte = "я".repeat(256);
        assert!(
            check_raw_length(&multibyte).is_ok(),
            "characters, not bytes"
        );
    }

    // ---- auto-detect -----------------------------------------------------------------------

    #[test]
    fn auto_detect_without_formats() {
        let rows = [
            ("8 (912) 345-67-89", Auto, one(Phone, "+79123456789")),
            ("+7 912 345 67 89", Auto, one(Phone, "+79123456789")),
            ("+44 20 7946 0958", Auto, one(Phone, "+442079460958")),
            (
                "9123456789",
                Auto,
                ok(Card, &[(Card, "9123456789"), (Phone, "+79123456789")]),
            ),
            (
                "89123456789",
                Auto,
                ok(Card, &[(Card, "89123456789"), (Phone, "+79123456789")]),
            ),
            (
                "8 912 345-67-89",
                Auto,
                ok(Card, &[(Card, "89123456789"), (Phone, "+79123456789")]),
            ),
            (
                "4600000000008",
                Auto,
                ok(Ean13, &[(Card, "4600000000008"), (Ean13, "4600000000008")]),
            ),
            ("4600000000009", Auto, ok(Card, &[(Card, "4600000000009")])),
            (
                "04A224B2C35E80",
                Auto,
                ok(Card, &[(Card, "04A224B2C35E80"), (Uid, "04A224B2C35E80")]),
            ),
            ("04:a2:24:b2:c3:5e:80", Auto, one(Uid, "04A224B2C35E80")),
            (
                "04 a2 24 b2 c3 5e 80",
                Auto,
                ok(Card, &[(Card, "04A224B2C35E80"), (Uid, "04A224B2C35E80")]),
            ),
            (
                "12345678",
                Auto,
                ok(Card, &[(Card, "12345678"), (Uid, "12345678")]),
            ),
            ("hello", Auto, one(Card, "HELLO")),
            ("ab-12\r\n", Auto, one(Card, "AB12")),
            ("12", Auto, Err(INVALID)),
            ("hello world!", Auto, Err(INVALID)),
            ("+7 912", Auto, Err(INVALID)),
            ("(912) 345-67-8", Auto, Err(INVALID)),
            ("+7 912 ABC 67 89", Auto, Err(INVALID)),
            ("   ", Auto, Err(INVALID)),
        ];
        check_rows(&Formats::default(), &rows);
    }

    #[test]
    fn auto_detect_with_formats() {
        let rows = [
            ("7700 0000 0000 0123", Auto, one(Card, "7700000000000123")),
            ("7700000000000124", Auto, Err(CHECKSUM)),
            ("9123456789", Auto, one(Phone, "+79123456789")),
            ("89123456789", Auto, one(Phone, "+79123456789")),
            ("12345678", Auto, one(Uid, "12345678")),
            ("AB1234", Auto, one(Card, "AB1234")),
            ("hello", Auto, Err(INVALID)),
            ("4600000000008", Auto, one(Ean13, "4600000000008")),
        ];
        check_rows(&luhn_formats(), &rows);
    }

    #[test]
    fn auto_detect_with_other_region() {
        let rows = [
            (
                "020 7946 0958",
                Auto,
                ok(Card, &[(Card, "02079460958"), (Phone, "+442079460958")]),
            ),
            ("(020) 7946 0958", Auto, one(Phone, "+442079460958")),
        ];
        check_rows(&gb(), &rows);
    }

    #[test]
    fn dedupe_keeps_first_positions() {
        let a = Candidate::new(Card, "1");
        let b = Candidate::new(Phone, "1");
        let got = dedupe(vec![a.clone(), b.clone(), a.clone(), b.clone()]);
        assert_eq!(got, vec![a, b]);
    }

    // ---- storage form ----------------------------------------------------------------------

    #[test]
    fn storage_forms() {
        type Row = (
            &'static str,
            IdentifierKind,
            Result<(IdentifierKind, &'static str), &'static str>,
        );
        let default_rows: [Row; 14] = [
            ("9123456789", Auto, Ok((Card, "9123456789"))),
            ("+79123456789", Auto, Ok((Phone, "+79123456789"))),
            ("8 (912) 345-67-89", Auto, Ok((Phone, "+79123456789"))),
            ("9123456789", Phone, Ok((Phone, "+79123456789"))),
            ("4600000000008", Auto, Ok((Card, "4600000000008"))),
            ("4600000000008", Ean13, Ok((Card, "4600000000008"))),
            ("ABC-123\r\n", Code128, Ok((Card, "ABC123"))),
            ("a@b", Code128, Ok((Code128, "a@b"))),
            (";1234567890123=2512?", Auto, Ok((Card, "1234567890123"))),
            ("04:a2:24:b2:c3:5e:80", Auto, Ok((Uid, "04A224B2C35E80"))),
            ("04a224b2c35e80", Uid, Ok((Uid, "04A224B2C35E80"))),
            (" pass-1 ", Wallet, Ok((Wallet, "pass-1"))),
            ("4600000000009", Ean13, Err(CHECKSUM)),
            ("12", Auto, Err(INVALID)),
        ];
        let luhn_rows: [Row; 5] = [
            ("9123456789", Auto, Err(INVALID)),
            ("9123456789", Phone, Ok((Phone, "+79123456789"))),
            ("+7 912 345-67-89", Auto, Ok((Phone, "+79123456789"))),
            ("12345678", Auto, Ok((Uid, "12345678"))),
            ("7700000000000124", Auto, Err(CHECKSUM)),
        ];
        let try12_rows: [Row; 2] = [
            ("2900000000490", Ean13, Ok((Card, "290000000049"))),
            ("2900000000421", Auto, Ok((Ean13, "2900000000421"))),
        ];
        let tables: [(Formats, &[Row]); 4] = [
            (Formats::default(), &default_rows),
            (luhn_formats(), &luhn_rows),
            (try12_formats(), &try12_rows),
            (
                try12_no_formats(),
                &[("4600000000008", Ean13, Ok((Card, "460000000000")))],
            ),
        ];
        for (formats, rows) in tables {
            for (raw, hint, want) in rows {
                let got = storage_form(&input(raw, *hint), &formats)
                    .map(|c| (c.kind, c.value))
                    .map_err(|e| e.reason());
                let want = want.map(|(k, v)| (k, v.to_owned()));
                assert_eq!(got, want, "{raw:?} as {hint:?}");
            }
        }
    }

    // ---- display ---------------------------------------------------------------------------

    #[test]
    fn display_masks() {
        let rows = [
            (Phone, "+79123456789", "+7 912 ***-**-89"),
            (Phone, "+74951234567", "+7 495 ***-**-67"),
            (Phone, "+442079460958", "+44 207 ***-**-58"),
            (Phone, "+12025550143", "+1 202 ***-**-43"),
            (Phone, "+4915123456789", "+49 151 **-**-**-89"),
            (Phone, "+390212345678", "+39 021 ***-**-78"),
            (Phone, "+33612345678", "+33 612 **-**-78"),
            (Phone, "+37061234567", "+370 612 ***-67"),
            (Phone, "+2901234", "+290 **-34"),
            (Phone, "not a phone", "****-ne"),
            (Phone, "+7", "****"),
            (Card, "7700000000000123", "**** 0123"),
            (Card, "12345678", "**** 5678"),
            (Card, "ABC123", "**** 123"),
            (Card, "12345", "**** 45"),
            (Card, "1234", "****"),
            (Card, "1", "****"),
            (Card, "", "****"),
            (Ean13, "4600000000008", "**** 0008"),
            (Code128, "ABC-123", "**** 123"),
            (Wallet, "E621E1F8-C36C-495A-93FC-0C247A3E6E5F", "**** 6E5F"),
            (Wallet, "Ünï côdé", "**** côdé"),
            (Mag, "1234567890123", "**** 0123"),
            (Uid, "04A224B2C35E80", "****5E80"),
            (Uid, "DEADBEEF", "****BEEF"),
            (Uid, "BEEF", "****"),
            (Auto, "secret", "****"),
        ];
        for (kind, value, want) in rows {
            assert_eq!(display(kind, value), want, "{kind:?} {value:?}");
        }
    }

    #[test]
    fn phone_display_never_shows_the_number() {
        let phones = [
            "+79123456789",
            "+442079460958",
            "+12025550143",
            "+4915123456789",
            "+390212345678",
            "+380501234567",
            "+2901234",
        ];
        for phone in phones {
            let shown = display(Phone, phone);
            let digits: String = shown.chars().filter(char::is_ascii_digit).collect();
            let code = phonenumber::parse(None, phone).unwrap().code().value();
            let national_len = phone.len() - 1 - code.to_string().len();
            let national_shown = digits.len() - (phone.len() - 1 - national_len);
            assert!(national_shown * 2 <= national_len + 1, "{phone} -> {shown}");
            assert!(
                !shown.contains(&phone[phone.len() - 6..]),
                "{phone} -> {shown}"
            );
        }
    }

    #[test]
    fn to_proto_fills_display() {
        let c = Candidate::new(Phone, "+79123456789");
        let id = to_proto(&c);
        assert_eq!(id.kind, IdentifierKind::Phone as i32);
        assert_eq!(id.value, "+79123456789");
        assert_eq!(id.display, "+7 912 ***-**-89");
        let card = to_proto(&Candidate::new(Card, "7700000000000123"));
        assert_eq!(
            (card.kind, card.display.as_str()),
            (Card as i32, "**** 0123")
        );
    }

    // ---- robustness ------------------------------------------------------------------------

    /// Deterministic pseudo-random inputs over the interesting characters: nothing panics.
    #[test]
    fn no_input_panics() {
        let alphabet: Vec<char> = "0123456789+()-. %;?^=:abcdefXYZ\r\n٩９я\u{0}"
            .chars()
            .collect();
        let hints = [Auto, Card, Ean13, Code128, Mag, Uid, Phone, Wallet];
        let formatted = [Formats::default(), luhn_formats(), try12_formats(), gb()];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..3000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let len = (state >> 58) as usize;
            let raw: String = (0..len)
                .map(|i| {
                    let pick = (state.rotate_left(i as u32 * 7) % alphabet.len() as u64) as usize;
                    alphabet[pick]
                })
                .collect();
            for hint in hints {
                for formats in &formatted {
                    let inp = input(&raw, hint);
                    if let Ok(parsed) = parse(&inp, formats) {
                        assert!(!parsed.candidates.is_empty(), "{raw:?}");
                        for c in &parsed.candidates {
                            let _ = to_proto(c);
                        }
                    }
                    let _ = storage_form(&inp, formats);
                }
            }
        }
    }
}
