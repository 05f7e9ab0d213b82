//! What the Twilio simulator answers about one number: whether it is a
//! valid number, how it is written, and, for the paid package, what kind
//! of line it is.
//!
//! The line type comes from a fixed rule on the last two digits, shared
//! with the seed generator, so a seeded warehouse knows in advance which
//! of its cases the worker should refuse to text.

use std::collections::BTreeSet;

use phonenumber::country::Id;
use phonenumber::metadata::DATABASE;
use phonenumber::{Mode, ParseError, PhoneNumber, Type};
use serde::Serialize;

/// The name of the paid package the pipeline asks for.
pub(crate) const LINE_TYPE_INTELLIGENCE: &str = "line_type_intelligence";

/// `line_type_intelligence.type`, with Twilio's spelling in `as_str`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LineType {
    Mobile,
    Landline,
    FixedVoip,
    NonFixedVoip,
    Personal,
    TollFree,
    Premium,
    SharedCost,
    Uan,
    Voicemail,
    Pager,
    Unknown,
}

impl LineType {
    /// The value Twilio puts in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LineType::Mobile => "mobile",
            LineType::Landline => "landline",
            LineType::FixedVoip => "fixedVoip",
            LineType::NonFixedVoip => "nonFixedVoip",
            LineType::Personal => "personal",
            LineType::TollFree => "tollFree",
            LineType::Premium => "premium",
            LineType::SharedCost => "sharedCost",
            LineType::Uan => "uan",
            LineType::Voicemail => "voicemail",
            LineType::Pager => "pager",
            LineType::Unknown => "unknown",
        }
    }

    /// A made-up carrier for the type, so answers look like Twilio's.
    /// Twilio names no carrier when it does not know the line.
    fn carrier(self) -> Option<(&'static str, &'static str)> {
        match self {
            LineType::Mobile => Some(("Simulated Wireless", "800")),
            LineType::Landline => Some(("Simulated Telephone Company", "010")),
            LineType::FixedVoip | LineType::NonFixedVoip => Some(("Simulated VoIP", "980")),
            LineType::Unknown => None,
            _ => Some(("Simulated Carrier", "000")),
        }
    }
}

impl std::fmt::Display for LineType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The line type the simulator reports for an E.164 number.
///
/// The last two digits decide: 00-79 mobile, 80-89 landline, 90-93
/// nonFixedVoip, 94-96 fixedVoip, 97 pager, 98 voicemail, 99 unknown.
/// Four in five numbers can take an SMS, and every refusal the worker must
/// handle shows up in a seed of a few hundred cases. A string that does
/// not end in two digits is `Unknown`.
pub fn line_type_for(e164: &str) -> LineType {
    let tail = e164.as_bytes().rchunks(2).next().unwrap_or_default();
    let [tens, ones] = tail else {
        return LineType::Unknown;
    };
    if !tens.is_ascii_digit() || !ones.is_ascii_digit() {
        return LineType::Unknown;
    }

    match (tens - b'0') * 10 + (ones - b'0') {
        0..=79 => LineType::Mobile,
        80..=89 => LineType::Landline,
        90..=93 => LineType::NonFixedVoip,
        94..=96 => LineType::FixedVoip,
        97 => LineType::Pager,
        98 => LineType::Voicemail,
        _ => LineType::Unknown,
    }
}

/// One 200 answer of `GET /v2/PhoneNumbers/{PhoneNumber}`.
#[derive(Debug, Serialize)]
pub(crate) struct PhoneNumberAnswer {
    calling_country_code: Option<String>,
    country_code: Option<String>,
    phone_number: String,
    national_format: Option<String>,
    pub(crate) valid: bool,
    validation_errors: Option<Vec<&'static str>>,
    line_type_intelligence: Option<LineTypeIntelligence>,
    #[serde(flatten)]
    unsimulated: UnsimulatedPackages,
}

impl PhoneNumberAnswer {
    /// The E.164 number this answer billed a paid package for, if any.
    pub(crate) fn paid_for(&self) -> Option<&str> {
        self.line_type_intelligence
            .as_ref()
            .map(|_| self.phone_number.as_str())
    }
}

#[derive(Debug, Serialize)]
struct LineTypeIntelligence {
    #[serde(rename = "type")]
    line_type: &'static str,
    carrier_name: Option<&'static str>,
    mobile_country_code: Option<&'static str>,
    mobile_network_code: Option<&'static str>,
    error_code: Option<u32>,
}

/// The other v2 packages. The simulator knows none of them, and Twilio
/// answers a package it was not asked for with `null`, so they are always
/// `null` here.
#[derive(Debug, Default, Serialize)]
struct UnsimulatedPackages {
    caller_name: Option<()>,
    sim_swap: Option<()>,
    call_forwarding: Option<()>,
    line_status: Option<()>,
    identity_match: Option<()>,
    reassigned_number: Option<()>,
    sms_pumping_risk: Option<()>,
    phone_number_quality_score: Option<()>,
    pre_fill: Option<()>,
}

/// Looks a number up as Twilio would.
///
/// `raw` is the path segment after decoding, `country` the `CountryCode`
/// query parameter (the default region for numbers in national format),
/// and `fields` the `Fields` query parameter.
pub(crate) fn look_up(raw: &str, country: Option<&str>, fields: Option<&str>) -> PhoneNumberAnswer {
    let wants_line_type = fields
        .unwrap_or_default()
        .split(',')
        .any(|field| field.trim() == LINE_TYPE_INTELLIGENCE);

    // An unknown country code cannot be a default region; Twilio reports
    // it as a validation error rather than refusing the request.
    let region = match country.map(str::trim).filter(|c| !c.is_empty()) {
        None => Id::US,
        Some(code) => match code.to_ascii_uppercase().parse::<Id>() {
            Ok(id) => id,
            Err(_) => return invalid(raw, None, "INVALID_COUNTRY_CODE"),
        },
    };

    let number = match phonenumber::parse(Some(region), raw) {
        Ok(number) => number,
        Err(error) => return invalid(raw, None, parse_failure(&error)),
    };
    if !number.is_valid() {
        let reason = length_verdict(&number);
        return invalid(raw, Some(&number), reason);
    }

    let e164 = number.format().mode(Mode::E164).to_string();
    let country_code = number.country().id().map(|id| id.as_ref().to_owned());
    let line_type_intelligence = wants_line_type.then(|| {
        let line_type = line_type_for(&e164);
        let carrier = line_type.carrier();
        let american = country_code.as_deref() == Some("US");
        LineTypeIntelligence {
            line_type: line_type.as_str(),
            carrier_name: carrier.map(|(name, _)| name),
            // 310 is a US mobile country code; the simulator invents no
            // network codes for other countries.
            mobile_country_code: carrier.filter(|_| american).map(|_| "310"),
            mobile_network_code: carrier.filter(|_| american).map(|(_, mnc)| mnc),
            error_code: None,
        }
    });

    PhoneNumberAnswer {
        calling_country_code: Some(number.country().code().to_string()),
        country_code,
        national_format: Some(number.format().mode(Mode::National).to_string()),
        phone_number: e164,
        valid: true,
        validation_errors: None,
        line_type_intelligence,
        unsimulated: UnsimulatedPackages::default(),
    }
}

/// The answer for a number that is not valid: still a 200, never billed.
fn invalid(raw: &str, parsed: Option<&PhoneNumber>, reason: &'static str) -> PhoneNumberAnswer {
    PhoneNumberAnswer {
        calling_country_code: parsed.map(|n| n.country().code().to_string()),
        country_code: parsed
            .and_then(|n| n.country().id())
            .map(|id| id.as_ref().to_owned()),
        phone_number: parsed
            .map(|n| n.format().mode(Mode::E164).to_string())
            .unwrap_or_else(|| raw.to_owned()),
        national_format: None,
        valid: false,
        validation_errors: Some(vec![reason]),
        line_type_intelligence: None,
        unsimulated: UnsimulatedPackages::default(),
    }
}

/// Twilio's validation error for input the parser refused outright.
fn parse_failure(error: &ParseError) -> &'static str {
    match error {
        ParseError::InvalidCountryCode => "INVALID_COUNTRY_CODE",
        ParseError::TooShortAfterIdd | ParseError::TooShortNsn => "TOO_SHORT",
        ParseError::TooLong => "TOO_LONG",
        _ => "NOT_A_NUMBER",
    }
}

/// Twilio's validation error for a number that parsed but is not valid:
/// a length no number of its country has, or else a right-sized number
/// that is not assigned (`INVALID_BUT_POSSIBLE`).
fn length_verdict(number: &PhoneNumber) -> &'static str {
    // An invalid number often matches no region's patterns, so the lengths
    // are taken from the main country of its calling code (the US for +1).
    let calling_code = number.country().code();
    let Some(regions) = DATABASE.by_code(&calling_code) else {
        return "INVALID_COUNTRY_CODE";
    };
    let Some(main) = regions
        .iter()
        .find(|meta| meta.is_main_country_for_code())
        .or_else(|| regions.first())
    else {
        return "INVALID_COUNTRY_CODE";
    };

    // The metadata keeps lengths per kind of number, not for the country
    // as a whole, so the possible lengths are the union over the kinds.
    let kinds = [
        Type::FixedLine,
        Type::Mobile,
        Type::TollFree,
        Type::PremiumRate,
        Type::SharedCost,
        Type::PersonalNumber,
        Type::Voip,
        Type::Pager,
        Type::Uan,
        Type::Voicemail,
    ];
    let lengths: BTreeSet<u16> = kinds
        .into_iter()
        .filter_map(|kind| main.descriptors().get(kind))
        .flat_map(|descriptor| descriptor.possible_length().iter().copied())
        .collect();

    let len = u16::try_from(number.national().to_string().len()).unwrap_or(u16::MAX);
    match (lengths.first(), lengths.last()) {
        (Some(&shortest), _) if len < shortest => "TOO_SHORT",
        (_, Some(&longest)) if len > longest => "TOO_LONG",
        (Some(_), _) if !lengths.contains(&len) => "INVALID_LENGTH",
        _ => "INVALID_BUT_POSSIBLE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_type_follows_the_last_two_digits() {
        let cases = [
            ("+19165550100", LineType::Mobile),
            ("+19165550179", LineType::Mobile),
            ("+19165550180", LineType::Landline),
            ("+19165550189", LineType::Landline),
            ("+19165550190", LineType::NonFixedVoip),
            ("+19165550193", LineType::NonFixedVoip),
            ("+19165550194", LineType::FixedVoip),
            ("+19165550196", LineType::FixedVoip),
            ("+19165550197", LineType::Pager),
            ("+19165550198", LineType::Voicemail),
            ("+19165550199", LineType::Unknown),
        ];
        for (e164, expected) in cases {
            assert_eq!(line_type_for(e164), expected, "{e164}");
        }
    }

    #[test]
    fn line_type_of_a_string_without_two_final_digits_is_unknown() {
        for odd in ["", "7", "+1916555012x", "+1916555012é"] {
            assert_eq!(line_type_for(odd), LineType::Unknown, "{odd:?}");
        }
    }

    #[test]
    fn line_types_are_spelled_as_twilio_spells_them() {
        assert_eq!(LineType::FixedVoip.as_str(), "fixedVoip");
        assert_eq!(LineType::NonFixedVoip.as_str(), "nonFixedVoip");
        assert_eq!(LineType::TollFree.to_string(), "tollFree");
    }

    #[test]
    fn validation_errors_name_the_reason_a_number_is_refused() {
        let cases = [
            ("hello", "NOT_A_NUMBER"),
            ("+1916", "TOO_SHORT"),
            ("+1916555012", "TOO_SHORT"),
            ("+191655501234567", "TOO_LONG"),
            ("+12005550100", "INVALID_BUT_POSSIBLE"),
        ];
        for (raw, reason) in cases {
            let answer = look_up(raw, None, None);

            assert!(!answer.valid, "{raw} should be invalid");
            assert_eq!(answer.validation_errors, Some(vec![reason]), "{raw}");
        }
    }
}
