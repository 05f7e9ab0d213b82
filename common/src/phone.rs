//! Phone numbers: from what a health department typed to E.164. The worker
//! normalises every number before any paid call, so an impossible number
//! costs nothing; the producer normalises too, to find one person's cases.

use std::fmt;

use phonenumber::{Mode, country};

/// Longer input is refused before parsing: no real number needs it.
const MAX_RAW_LEN: usize = 32;

/// A phone number in E.164 form (`+19165551234`), valid by the numbering
/// plan. Its `Debug` and `Display` print it masked, so it cannot leak into a
/// log by accident; `as_str` gives the whole number to the calls that need it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);

/// Why a number could not be normalised. `code` is what the outcome table
/// records as the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("no phone number")]
    Missing,
    #[error("the phone number is longer than {MAX_RAW_LEN} characters")]
    TooLong,
    #[error("the phone number contains characters other than digits and punctuation")]
    NotANumber,
    #[error("the phone number cannot be parsed")]
    Unparseable,
    #[error("the phone number does not exist in the numbering plan")]
    NotValid,
}

impl PhoneError {
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "phone_missing",
            Self::TooLong => "phone_too_long",
            Self::NotANumber => "phone_not_a_number",
            Self::Unparseable => "phone_unparseable",
            Self::NotValid => "phone_not_valid",
        }
    }
}

/// The region numbers without a country code belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region(country::Id);

impl Region {
    pub const US: Region = Region(country::Id::US);

    /// Reads an ISO 3166 alpha-2 code such as `US`.
    pub fn parse(code: &str) -> Option<Self> {
        code.trim().to_ascii_uppercase().parse().ok().map(Region)
    }
}

impl std::str::FromStr for Region {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| format!("{s:?} is not an ISO 3166 region code"))
    }
}

impl E164 {
    /// Normalises a number as entered: `9165551234`, `(916) 555-1234`,
    /// `+1 916-555-1234` and `19165551234` all give `+19165551234`.
    pub fn normalize(raw: &str, region: Region) -> Result<Self, PhoneError> {
        // Pasted numbers often carry zero-width or direction marks; they are
        // invisible to whoever typed them, so they are dropped, not refused.
        let cleaned: String = raw.chars().filter(|c| !is_invisible(*c)).collect();
        let cleaned = cleaned.trim();

        if cleaned.is_empty() {
            return Err(PhoneError::Missing);
        }
        if cleaned.chars().count() > MAX_RAW_LEN {
            return Err(PhoneError::TooLong);
        }

        // libphonenumber reads letters as keypad digits; a health record
        // with letters in the phone is a data-entry error, not a vanity number.
        if !cleaned
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c))
        {
            return Err(PhoneError::NotANumber);
        }

        let number =
            phonenumber::parse(Some(region.0), cleaned).map_err(|_| PhoneError::Unparseable)?;
        if !phonenumber::is_valid(&number) {
            return Err(PhoneError::NotValid);
        }
        Ok(Self(number.format().mode(Mode::E164).to_string()))
    }

    /// Accepts a number already in E.164 form, as a peer answered it.
    pub fn from_e164(s: &str) -> Result<Self, PhoneError> {
        if !s.starts_with('+') {
            return Err(PhoneError::Unparseable);
        }
        let parsed = Self::normalize(s, Region::US)?;
        if parsed.0 != s {
            return Err(PhoneError::Unparseable);
        }
        Ok(parsed)
    }

    /// The whole number, for the requests that need it. Never log this.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number with all but the country code and last four digits hidden:
    /// `+1******1234`.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// Masks any string that may hold a phone number, keeping the leading `+`
/// and country digit and the last four characters.
pub fn mask(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    if chars.len() <= 6 {
        return "*".repeat(chars.len());
    }
    let head = if chars[0] == '+' { 2 } else { 0 };
    let tail = 4;
    let mut out: String = chars[..head].iter().collect();
    out.push_str(&"*".repeat(chars.len() - head - tail));
    out.extend(&chars[chars.len() - tail..]);
    out
}

fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164({})", self.masked())
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalize(raw: &str) -> Result<String, PhoneError> {
        E164::normalize(raw, Region::US).map(|n| n.as_str().to_owned())
    }

    #[test]
    fn every_input_format_a_department_uses_gives_the_same_e164() {
        for raw in [
            "9165551234",
            "(916) 555-1234",
            "+1 916-555-1234",
            "19165551234",
            "+19165551234",
            "916.555.1234",
            " 916 555 1234 ",
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok("+19165551234"), "{raw}");
        }
    }

    #[test]
    fn invisible_characters_are_dropped() {
        assert_eq!(
            normalize("\u{200B}916\u{FEFF}555\u{2060}1234").as_deref(),
            Ok("+19165551234")
        );
    }

    #[test]
    fn impossible_numbers_are_refused_with_a_reason() {
        assert_eq!(normalize(""), Err(PhoneError::Missing));
        assert_eq!(normalize("   "), Err(PhoneError::Missing));
        assert_eq!(normalize("916-555-CALL"), Err(PhoneError::NotANumber));
        assert_eq!(
            normalize("916'; DROP TABLE cases;--"),
            Err(PhoneError::NotANumber)
        );
        assert_eq!(normalize(&"9".repeat(200)), Err(PhoneError::TooLong));
        assert_eq!(normalize("555-1234"), Err(PhoneError::NotValid));
        assert!(normalize("123").is_err());
        assert!(normalize("(000) 000-0000").is_err());
        assert!(normalize("+1 123 456 7890").is_err());
    }

    #[test]
    fn international_numbers_keep_their_country_code() {
        assert_eq!(
            normalize("+44 20 7946 0958").as_deref(),
            Ok("+442079460958")
        );
    }

    #[test]
    fn masking_keeps_only_the_country_digit_and_last_four() {
        let number = E164::normalize("9165551234", Region::US).unwrap();

        assert_eq!(number.masked(), "+1******1234");
        assert_eq!(format!("{number:?}"), "E164(+1******1234)");
        assert_eq!(format!("{number}"), "+1******1234");
        assert_eq!(mask("(916) 555-1234"), "**********1234");
    }

    #[test]
    fn from_e164_accepts_only_the_canonical_form() {
        assert!(E164::from_e164("+19165551234").is_ok());
        assert!(E164::from_e164("9165551234").is_err());
        assert!(E164::from_e164("+1 916 555 1234").is_err());
    }
}
