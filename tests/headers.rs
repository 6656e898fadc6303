//! Rate-limit headers as the vendors send them, hostile variants of each, the strict
//! RFC 9651 mode, and the contract between the strict and lenient readers.
//!
//! The vendor shapes are copied from each vendor's documentation (the URLs are in
//! `src/presets.rs`); the hostile ones are what a proxy, a bug or an attacker could send.

#[path = "../fuzz/src/invariant.rs"]
mod invariant;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use tower_throttle::headers::{
    rate_limit_info, rate_limit_info_with, HeaderFamily, ParseMode, QuotaUnit, RateLimitInfo, Usage,
};

const NOW: u64 = 1_700_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

/// Header lines as (name, raw bytes), so tests can send bytes `&str` cannot hold.
type Pairs<'a> = &'a [(&'a str, &'a [u8])];

fn map(pairs: Pairs<'_>) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v).unwrap(),
        );
    }
    h
}

/// (family, limit, remaining, reset seconds, window seconds)
type Seen = (
    HeaderFamily,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
);

fn seen(i: &RateLimitInfo) -> Seen {
    (
        i.source,
        i.limit,
        i.remaining,
        i.reset.map(|d| d.as_secs()),
        i.window.map(|d| d.as_secs()),
    )
}

fn read(pairs: Pairs<'_>) -> Option<Seen> {
    rate_limit_info(&map(pairs), now()).as_ref().map(seen)
}

#[test]
fn vendor_header_shapes_table() {
    use HeaderFamily::*;
    let epoch_in_10 = (NOW + 10).to_string();
    let epoch_in_10 = epoch_in_10.as_bytes();
    let cases: &[(&str, Pairs<'_>, Option<Seen>)] = &[
        (
            "hubspot professional",
            &[
                ("x-hubspot-ratelimit-max", b"190"),
                ("x-hubspot-ratelimit-remaining", b"187"),
                ("x-hubspot-ratelimit-interval-milliseconds", b"10000"),
                ("x-hubspot-ratelimit-daily", b"625000"),
                ("x-hubspot-ratelimit-daily-remaining", b"624000"),
            ],
            Some((HubSpot, Some(190), Some(187), None, Some(10))),
        ),
        (
            "shopify",
            &[("x-shopify-shop-api-call-limit", b"32/40")],
            Some((Shopify, Some(40), Some(8), None, None)),
        ),
        (
            "shopify plus",
            &[("x-shopify-shop-api-call-limit", b"4/80")],
            Some((Shopify, Some(80), Some(76), None, None)),
        ),
        (
            "shopify overfull bucket",
            &[("x-shopify-shop-api-call-limit", b"41/40")],
            Some((Shopify, Some(40), Some(0), None, None)),
        ),
        (
            "shopify spaces",
            &[("x-shopify-shop-api-call-limit", b" 32 / 40 ")],
            Some((Shopify, Some(40), Some(8), None, None)),
        ),
        (
            "salesforce",
            &[("sforce-limit-info", b"api-usage=18/5000")],
            Some((Salesforce, None, None, None, None)),
        ),
        (
            "salesforce with per-app usage",
            &[(
                "sforce-limit-info",
                b"api-usage=25/5000, per-app-api-usage=17/250(appName=sample-connected-app)",
            )],
            Some((Salesforce, None, None, None, None)),
        ),
        (
            "salesforce over the allowance",
            &[("sforce-limit-info", b"api-usage=5001/5000")],
            Some((Salesforce, None, None, None, None)),
        ),
        (
            "intercom epoch reset",
            &[
                ("x-ratelimit-limit", b"10000"),
                ("x-ratelimit-remaining", b"9847"),
                ("x-ratelimit-reset", epoch_in_10),
            ],
            Some((XRateLimit, Some(10_000), Some(9847), Some(10), None)),
        ),
        (
            "sendgrid 429",
            &[
                ("x-ratelimit-limit", b"150"),
                ("x-ratelimit-remaining", b"0"),
                ("x-ratelimit-reset", epoch_in_10),
            ],
            Some((XRateLimit, Some(150), Some(0), Some(10), None)),
        ),
        (
            "braze",
            &[
                ("x-ratelimit-limit", b"250000"),
                ("x-ratelimit-remaining", b"249999"),
                ("x-ratelimit-reset", epoch_in_10),
            ],
            Some((XRateLimit, Some(250_000), Some(249_999), Some(10), None)),
        ),
        (
            "klaviyo steady window, seconds to go",
            &[
                ("ratelimit-limit", b"700"),
                ("ratelimit-remaining", b"699"),
                ("ratelimit-reset", b"44"),
            ],
            Some((RateLimitSplit, Some(700), Some(699), Some(44), None)),
        ),
        (
            "x-ratelimit-reset in seconds to go",
            &[
                ("x-ratelimit-remaining", b"3"),
                ("x-ratelimit-reset", b"44"),
            ],
            Some((XRateLimit, None, Some(3), Some(44), None)),
        ),
        (
            "segment public api: reset as a date",
            &[
                ("x-ratelimit-remaining", b"0"),
                ("x-ratelimit-reset", b"Tue, 14 Nov 2023 22:13:27 GMT"),
            ],
            Some((XRateLimit, None, Some(0), Some(7), None)),
        ),
        (
            "ietf draft: two policies, the tighter reported",
            &[
                (
                    "ratelimit-policy",
                    b"\"burst\";q=100;w=60,\"daily\";q=1000;w=86400",
                ),
                ("ratelimit", b"\"burst\";r=3;t=10, \"daily\";r=900;t=3000"),
            ],
            Some((RateLimit, Some(100), Some(3), Some(10), Some(60))),
        ),
        (
            "ietf draft: policy list split over lines",
            &[
                ("ratelimit-policy", b"\"permin\";q=50;w=60"),
                ("ratelimit-policy", b"\"perhr\";q=1000;w=3600"),
                ("ratelimit", b"\"perhr\";r=0;t=1800"),
            ],
            Some((RateLimit, Some(1000), Some(0), Some(1800), Some(3600))),
        ),
    ];
    for (name, headers, want) in cases {
        assert_eq!(read(headers), *want, "case {name:?}");
    }
}

#[test]
fn hostile_vendor_values_table() {
    use HeaderFamily::*;
    let cases: &[(&str, Pairs<'_>, Option<Seen>)] = &[
        (
            "shopify missing half",
            &[("x-shopify-shop-api-call-limit", b"32/")],
            None,
        ),
        (
            "shopify missing used",
            &[("x-shopify-shop-api-call-limit", b"/40")],
            None,
        ),
        (
            "shopify three parts",
            &[("x-shopify-shop-api-call-limit", b"32/40/2")],
            None,
        ),
        (
            "shopify negative",
            &[("x-shopify-shop-api-call-limit", b"-1/40")],
            None,
        ),
        (
            "shopify overflow",
            &[("x-shopify-shop-api-call-limit", b"99999999999999999999/40")],
            None,
        ),
        (
            "shopify garbage then valid line",
            &[
                ("x-shopify-shop-api-call-limit", b"\xff/\xfe"),
                ("x-shopify-shop-api-call-limit", b"1/40"),
            ],
            Some((Shopify, Some(40), Some(39), None, None)),
        ),
        (
            "salesforce garbage",
            &[("sforce-limit-info", b"api-usage=lots")],
            None,
        ),
        (
            "salesforce per-app only",
            &[("sforce-limit-info", b"per-app-api-usage=17/250")],
            None,
        ),
        (
            "salesforce zero allowance",
            &[("sforce-limit-info", b"api-usage=0/0")],
            Some((Salesforce, None, None, None, None)),
        ),
        (
            "x-ratelimit-reset u64::MAX milliseconds",
            &[("x-ratelimit-reset", b"18446744073709551615")],
            Some((XRateLimit, None, None, Some(u64::MAX / 1000 - NOW), None)),
        ),
        (
            "x-ratelimit-reset date in the past",
            &[("x-ratelimit-reset", b"Thu, 01 Jan 1970 00:00:00 GMT")],
            Some((XRateLimit, None, None, Some(0), None)),
        ),
        (
            "x-ratelimit-reset garbage date",
            &[("x-ratelimit-reset", b"Tue, 99 Nov 2023 22:14:20 GMT")],
            None,
        ),
        (
            "ietf zero window is no window",
            &[
                ("ratelimit-policy", b"\"p\";q=10;w=0"),
                ("ratelimit", b"\"p\";r=1"),
            ],
            Some((RateLimit, Some(10), Some(1), None, None)),
        ),
        (
            "ietf negative remaining",
            &[("ratelimit", b"\"p\";r=-5;t=3")],
            Some((RateLimit, None, None, Some(3), None)),
        ),
        (
            "ietf repeated parameter: the last wins",
            &[("ratelimit", b"\"p\";r=9;r=1")],
            Some((RateLimit, None, Some(1), None, None)),
        ),
    ];
    for (name, headers, want) in cases {
        assert_eq!(read(headers), *want, "case {name:?}");
        // Whatever the bytes, both modes answer and agree where RFC 9651 is satisfied.
        invariant::check(&map(headers), now()).unwrap();
    }
}

#[test]
fn ietf_quota_unit_and_partition_key() {
    let h = map(&[
        (
            "ratelimit-policy",
            b"\"bytes\";q=65535;qu=\"content-bytes\";w=10;pk=:c2RmakxKVU9VSA==:, \"calls\";q=100;w=60",
        ),
        (
            "ratelimit",
            b"\"bytes\";r=0;t=5;pk=:c2RmakxKVU9VSA==:, \"calls\";r=40;t=30",
        ),
    ]);
    for mode in [ParseMode::Lenient, ParseMode::Strict] {
        let i = rate_limit_info_with(&h, now(), mode).unwrap();
        // Bytes remaining are not requests remaining: the request policy is reported.
        assert_eq!(i.policy.as_deref(), Some("calls"), "{mode:?}");
        assert_eq!(
            (i.remaining, i.quota_unit),
            (Some(40), Some(QuotaUnit::Requests))
        );
        assert_eq!(i.partition_key, None);
    }

    let only_bytes = map(&[
        (
            "ratelimit-policy",
            b"\"peruser\";q=65535;qu=\"content-bytes\";w=10;pk=:c2RmakxKVU9VSA==:",
        ),
        ("ratelimit", b"\"peruser\";r=300;t=60"),
    ]);
    for mode in [ParseMode::Lenient, ParseMode::Strict] {
        let i = rate_limit_info_with(&only_bytes, now(), mode).unwrap();
        assert_eq!(i.quota_unit, Some(QuotaUnit::ContentBytes), "{mode:?}");
        assert_eq!(i.limit, Some(65_535));
        // The policy's key, since the RateLimit item carries none.
        assert_eq!(i.partition_key.as_deref(), Some(&b"sdfjLJUOUH"[..]));
    }

    let units = [
        ("\"concurrent-requests\"", QuotaUnit::ConcurrentRequests),
        ("\"requests\"", QuotaUnit::Requests),
        ("\"bananas\"", QuotaUnit::Unknown),
    ];
    for (qu, unit) in units {
        let policy = format!("\"p\";q=10;qu={qu}");
        let h = map(&[
            ("ratelimit-policy", policy.as_bytes()),
            ("ratelimit", b"\"p\";r=1"),
        ]);
        assert_eq!(rate_limit_info(&h, now()).unwrap().quota_unit, Some(unit));
    }
}

/// The five departures from RFC 9651 that the lenient reader accepts and the strict one
/// must ignore (the field is then treated as absent, so the next family is read).
#[test]
fn strict_mode_ignores_fields_rfc_9651_rejects() {
    let cases: &[(&str, &[u8])] = &[
        ("uppercase key", b"Limit=100, remaining=5, reset=9"),
        (
            "sixteen-digit integer",
            b"\"default\";r=1234567890123456;t=9",
        ),
        ("space before semicolon", b"\"default\" ;r=5;t=9"),
        ("trailing comma", b"\"default\";r=5;t=9,"),
        ("trailing garbage", b"\"default\";r=5;t=9 garbage"),
    ];
    for (name, value) in cases {
        let h = map(&[("ratelimit", value), ("x-ratelimit-remaining", b"7")]);
        let lenient = rate_limit_info_with(&h, now(), ParseMode::Lenient).unwrap();
        assert_eq!(lenient.source, HeaderFamily::RateLimit, "{name}");
        assert!(lenient.remaining.is_some(), "{name}: {lenient:?}");
        let strict = rate_limit_info_with(&h, now(), ParseMode::Strict).unwrap();
        assert_eq!(
            (strict.source, strict.remaining),
            (HeaderFamily::XRateLimit, Some(7)),
            "{name}"
        );
        invariant::check(&h, now()).unwrap();
    }
    // One bad line poisons the whole field in strict mode (the lines are one field value).
    let h = map(&[("ratelimit", b"\"a\";r=5"), ("ratelimit", b"\"b\";r=1;t=")]);
    assert!(rate_limit_info_with(&h, now(), ParseMode::Lenient).is_some());
    assert_eq!(rate_limit_info_with(&h, now(), ParseMode::Strict), None);
}

#[test]
fn strict_mode_reads_both_draft_forms_and_the_split_fields() {
    let cases: &[(Pairs<'_>, Seen)] = &[
        (
            &[
                ("ratelimit", b"limit=100, remaining=50, reset=5"),
                ("ratelimit-policy", b"100;w=10"),
            ],
            (
                HeaderFamily::RateLimit,
                Some(100),
                Some(50),
                Some(5),
                Some(10),
            ),
        ),
        (
            &[
                ("ratelimit", b"\"default\";r=50;t=5"),
                ("ratelimit-policy", b"\"default\";q=100;w=10"),
            ],
            (
                HeaderFamily::RateLimit,
                Some(100),
                Some(50),
                Some(5),
                Some(10),
            ),
        ),
        (
            &[
                ("ratelimit-limit", b"700"),
                ("ratelimit-remaining", b"0"),
                ("ratelimit-reset", b"44"),
            ],
            (
                HeaderFamily::RateLimitSplit,
                Some(700),
                Some(0),
                Some(44),
                None,
            ),
        ),
    ];
    for (headers, want) in cases {
        let h = map(headers);
        let strict = rate_limit_info_with(&h, now(), ParseMode::Strict).unwrap();
        assert_eq!(seen(&strict), *want);
        assert_eq!(Some(strict), rate_limit_info(&h, now()));
    }
}

/// A daily allowance read as "limit per window" would pace the adaptive layer to
/// 5000 / 86,400 s: one request every 17 s. It is reported as the daily pair only.
#[test]
fn salesforce_daily_usage_is_reported_as_the_daily_pair_not_a_window() {
    let cases: &[(&[u8], u64, u64)] = &[
        (b"api-usage=18/5000", 5000, 4982),
        (
            b"api-usage=25/5000, per-app-api-usage=17/250(appName=sample-connected-app)",
            5000,
            4975,
        ),
        (b"api-usage=5001/5000", 5000, 0),
        (b"api-usage=0/0", 0, 0),
    ];
    for (value, limit, remaining) in cases {
        let h = map(&[("sforce-limit-info", value)]);
        let i = rate_limit_info(&h, now()).unwrap();
        assert_eq!(
            i.daily,
            Some(Usage {
                limit: *limit,
                remaining: *remaining
            })
        );
        assert_eq!((i.limit, i.remaining, i.window), (None, None, None));
        let for_controller = tower_throttle::adaptive::HeaderInfo::from(&i);
        assert_eq!(
            for_controller,
            tower_throttle::adaptive::HeaderInfo::default()
        );
    }
}

/// Bare values, valid and not, for members and parameters.
const VALUES: &[&str] = &[
    "0",
    "1",
    "7",
    "-0",
    "-1",
    "007",
    "1.5",
    "999999999999999",
    "9999999999999999",
    "?1",
    "@5",
    "%\"d\"",
    ":YWJj:",
    ":YWJ:",
    ":YWJjZA:",
    ":!!:",
    "\"content-bytes\"",
    "\"requests\"",
    "\"default\"",
    "\"a,b\"",
    "\"\\\"q\"",
    "tok/en:1",
    "Default",
    "",
];
/// Member heads: list items, dictionary keys, and broken ones.
const HEADS: &[&str] = &[
    "\"default\"",
    "\"a,b\"",
    "\"x",
    "default",
    "Default",
    "*",
    "100",
    "(a b)",
    "()",
    "limit=",
    "remaining=",
    "reset=",
    "limit",
    "Limit=",
    "=",
];
const KEYS: &[&str] = &["r", "t", "q", "w", "qu", "pk", "R", "x", " r", ""];
const SEPARATORS: &[&str] = &[",", ", ", " ,\t", ",,", " "];
const JUNK: &[&str] = &["", "", "", "", " garbage", ",", ";", "\"", "@@"];

/// One member: a head (with a value when it is a dictionary key) and parameters.
fn member() -> impl Strategy<Value = String> {
    let param = (
        prop::sample::select(KEYS),
        prop::option::of(prop::sample::select(VALUES)),
    )
        .prop_map(|(k, v)| match v {
            Some(v) => format!(";{k}={v}"),
            None => format!(";{k}"),
        });
    (
        prop::sample::select(HEADS),
        prop::sample::select(VALUES),
        prop::collection::vec(param, 0..4),
    )
        .prop_map(|(head, value, params)| {
            let value = if head.ends_with('=') { value } else { "" };
            format!("{head}{value}{}", params.concat())
        })
}

/// A field value: members joined by separators, sometimes with junk at the end.
fn field_value() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((member(), prop::sample::select(SEPARATORS)), 0..4),
        prop::sample::select(JUNK),
    )
        .prop_map(|(members, junk)| {
            let mut out = String::new();
            for (i, (m, sep)) in members.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                out.push_str(m);
            }
            out.push_str(junk);
            out.into_bytes()
        })
}

fn field_lines() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(field_value(), 0..3)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// The fuzz target's invariant, on values built from structured-field pieces so that
    /// valid fields come up often.
    #[test]
    fn strict_and_lenient_readers_keep_their_contract(
        ratelimit in field_lines(),
        policy in field_lines(),
        split in prop::collection::vec(prop::option::weighted(0.2, field_value()), 3),
    ) {
        let mut h = HeaderMap::new();
        let mut add = |name: &'static str, value: &[u8]| {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                h.append(name, v);
            }
        };
        for v in &ratelimit {
            add("ratelimit", v);
        }
        for v in &policy {
            add("ratelimit-policy", v);
        }
        for (name, v) in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"]
            .into_iter()
            .zip(&split)
        {
            if let Some(v) = v {
                add(name, v);
            }
        }
        if let Err(e) = invariant::check(&h, now()) {
            return Err(TestCaseError::fail(format!("{e}\n  headers: {h:?}")));
        }
    }
}
