use super::*;

const GOOD: &str = r#"
[unit]
id = "clinic-7"
tenant = "acme"
market = "us"
timezone = "America/Chicago"

[store]
retention_days = 30

[sip]
listen = "0.0.0.0:5062"
max_calls = 2
"#;

fn problems(text: &str) -> Vec<Problem> {
    match Config::parse(text, "test.toml", ConfigSource::File("test.toml".into())) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn one_problem(text: &str) -> Problem {
    let mut p = problems(text);
    assert_eq!(p.len(), 1, "expected one problem, got {p:?}");
    p.remove(0)
}

#[test]
fn embedded_default_is_valid_and_local() {
    let c = Config::embedded().unwrap();
    assert_eq!(c.source, ConfigSource::Embedded);
    assert!(c.sip.listen.ip().is_loopback());
    assert!(c.mqtt.is_none());
    assert_eq!(c.agent.script, "clinic");
}

#[test]
fn good_config_parses_with_defaults_filled() {
    let c = Config::parse(GOOD, "good.toml", ConfigSource::Embedded).unwrap();
    assert_eq!(c.unit.id, "clinic-7");
    assert_eq!(c.unit.timezone, chrono_tz::America::Chicago);
    assert_eq!(c.store.retention_days, 30);
    assert_eq!(c.sip.listen.port(), 5062);
    assert_eq!(c.sip.max_calls, 2);
    assert_eq!(c.agent.silence_reprompt_s, 6);
    assert_eq!(c.models.stt, "whisper-tiny-en");
}

#[test]
fn syntax_error_is_located() {
    let p = one_problem("[unit]\nid = \"a\"\ntenant = \n");
    assert_eq!(p.line, 3);
    assert!(
        p.message.contains("string") || p.message.contains("value"),
        "{p:?}"
    );
}

#[test]
fn unknown_key_names_the_key_and_the_valid_ones() {
    let text = format!("{GOOD}\n[agent]\nscirpt = \"law\"\n");
    let p = one_problem(&text);
    assert_eq!(p.key, "agent.scirpt");
    assert!(p.message.contains("unknown field `scirpt`"), "{p:?}");
    assert!(p.valid.contains("script"), "{p:?}");
    assert_eq!(p.line, GOOD.lines().count() + 3);
    assert_eq!(p.column, 1);
}

#[test]
fn wrong_type_is_reported_with_expected_type() {
    let text = GOOD.replace("max_calls = 2", "max_calls = \"two\"");
    let p = one_problem(&text);
    assert_eq!(p.key, "sip.max_calls");
    assert!(p.message.contains("invalid type"), "{p:?}");
    assert!(p.valid.contains("u32"), "{p:?}");
}

#[test]
fn bad_listen_address() {
    let p = one_problem(&GOOD.replace("0.0.0.0:5062", "0.0.0.0"));
    assert_eq!(p.key, "sip.listen");
    assert!(p.message.contains("not an address with a port"));
    assert!(p.valid.contains("0.0.0.0:5060"));
    assert_eq!(p.line, 12);
    assert_eq!(p.column, 10);
}

#[test]
fn unknown_time_zone() {
    let p = one_problem(&GOOD.replace("America/Chicago", "Mars/Olympus"));
    assert_eq!(p.key, "unit.timezone");
    assert!(p
        .message
        .contains("\"Mars/Olympus\" is not a known time zone"));
    assert!(p.valid.contains("IANA"));
}

#[test]
fn unknown_market_lists_markets() {
    let p = one_problem(&GOOD.replace("market = \"us\"", "market = \"mars\""));
    assert_eq!(p.key, "unit.market");
    assert!(p.message.contains("unknown variant `mars`"), "{p:?}");
    assert!(p.valid.contains("`uk`"), "{p:?}");
}

#[test]
fn out_of_range_number() {
    let p = one_problem(&GOOD.replace("retention_days = 30", "retention_days = 0"));
    assert_eq!(p.key, "store.retention_days");
    assert_eq!(p.message, "0 is out of range");
    assert_eq!(p.valid, "1 to 3650");
}

#[test]
fn warm_transfer_timeout_defaults_and_is_bounded() {
    let c = Config::parse(GOOD, "good.toml", ConfigSource::Embedded).unwrap();
    assert_eq!(c.handoff.warm_timeout_s, 20);
    let c = Config::parse(
        &format!("{GOOD}\n[handoff]\nwarm_timeout_s = 8\n"),
        "good.toml",
        ConfigSource::Embedded,
    )
    .unwrap();
    assert_eq!(c.handoff.warm_timeout_s, 8);
    let p = one_problem(&format!("{GOOD}\n[handoff]\nwarm_timeout_s = 600\n"));
    assert_eq!(p.key, "handoff.warm_timeout_s");
    assert_eq!(p.valid, "2 to 120");
}

#[test]
fn unit_id_must_be_topic_safe() {
    let p = one_problem(&GOOD.replace("clinic-7", "Clinic 7/#"));
    assert_eq!(p.key, "unit.id");
    assert!(p.valid.contains("MQTT topics"));
}

#[test]
fn missing_unit_table() {
    let p = one_problem("[sip]\nlisten = \"127.0.0.1:5060\"\n");
    assert_eq!(p.key, "unit");
    assert!(p.message.contains("[unit] table is missing"));
}

#[test]
fn mqtt_url_and_tls_rules() {
    let text = format!("{GOOD}\n[mqtt]\nbroker = \"http://crm.lan\"\ncert_file = \"c.pem\"\n");
    let p = problems(&text);
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"mqtt.broker"), "{p:?}");
    assert!(keys.contains(&"mqtt.cert_file"), "{p:?}");
    assert!(p[0].message.contains("not an MQTT URL"));
}

#[test]
fn mqtt_broker_port_parsed() {
    let text = format!("{GOOD}\n[mqtt]\nbroker = \"mqtts://crm.lan:8884\"\n");
    let c = Config::parse(&text, "t", ConfigSource::Embedded).unwrap();
    let m = c.mqtt.unwrap();
    assert_eq!((m.host.as_str(), m.port, m.tls), ("crm.lan", 8884, true));
    assert_eq!(m.client_id, "clinic-7");
    let p = one_problem(&format!(
        "{GOOD}\n[mqtt]\nbroker = \"mqtt://crm.lan:99999\"\n"
    ));
    assert!(p.message.contains("port \"99999\""), "{p:?}");
}

#[test]
fn hangup_must_follow_reprompt() {
    let text = format!("{GOOD}\n[agent]\nsilence_reprompt_s = 10\nsilence_hangup_s = 8\n");
    let p = one_problem(&text);
    assert_eq!(p.key, "agent.silence_hangup_s");
    assert!(p.message.contains("not longer than silence_reprompt_s"));
}

#[test]
fn model_must_exist_in_manifest_with_role() {
    let text = format!("{GOOD}\n[models]\nstt = \"smollm2-135m\"\n");
    let p = one_problem(&text);
    assert_eq!(p.key, "models.stt");
    assert!(p.message.contains("not a stt model"));
    assert!(p.valid.contains("whisper-tiny-en"));
}

#[test]
fn bad_baud_rate() {
    let text = format!("{GOOD}\n[modem]\nport = \"/dev/ttyUSB2\"\nbaud = 12345\n");
    let p = one_problem(&text);
    assert_eq!(p.key, "modem.baud");
    assert!(p.valid.contains("115200"));
}

#[test]
fn every_problem_is_listed_at_once() {
    let text = GOOD
        .replace("America/Chicago", "Nowhere")
        .replace("retention_days = 30", "retention_days = 99999")
        .replace("max_calls = 2", "max_calls = 0");
    let p = problems(&text);
    assert_eq!(p.len(), 3, "{p:?}");
    let rendered = ConfigError::Invalid {
        file: "/etc/callbox/callbox.toml".into(),
        problems: p,
    }
    .to_string();
    assert!(
        rendered.contains("/etc/callbox/callbox.toml:6:12: `unit.timezone`"),
        "{rendered}"
    );
    assert!(rendered.contains("valid: 1 to 32"), "{rendered}");
}

#[test]
fn file_loading_missing_file_is_an_error_not_a_default() {
    let err = Config::load(Some(Path::new("/nonexistent/callbox.toml"))).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/callbox.toml"));
}

#[test]
fn relative_paths_resolve_against_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callbox.toml");
    std::fs::write(
        &path,
        format!("{GOOD}\n[store]\nkey_file = \"db.key\"\n")
            .replace("[store]\nretention_days = 30\n", ""),
    )
    .unwrap();
    let c = Config::from_file(&path).unwrap();
    assert_eq!(c.store.key_file.unwrap(), dir.path().join("db.key"));
}

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("ab\ncé\nx", 7), (3, 1));
    assert_eq!(line_col("ab\ncé\nx", 3), (2, 1));
    assert_eq!(line_col("abc", 2), (1, 3));
}

#[test]
fn fleet_keys_are_ed25519_public_keys_in_hex() {
    let key = "11".repeat(32);
    let text = format!("{GOOD}\n[fleet.keys]\nfleet-a = \"{key}\"\n");
    let c = Config::parse(&text, "test.toml", ConfigSource::File("test.toml".into())).unwrap();
    assert_eq!(c.fleet.keys["fleet-a"], [0x11; 32]);

    let p = one_problem(&format!("{GOOD}\n[fleet.keys]\nfleet-a = \"abcd\"\n"));
    assert_eq!(p.key, "fleet.keys.fleet-a");
    assert!(p.valid.contains("callbox fleet keygen"), "{p:?}");
    let p = one_problem(&format!("{GOOD}\n[fleet.keys]\n\"Fleet A\" = \"{key}\"\n"));
    assert_eq!(p.key, "fleet.keys.Fleet A");
}

#[test]
fn inference_threads_default_to_the_cores_and_are_bounded() {
    let c = Config::parse(GOOD, "good.toml", ConfigSource::Embedded).unwrap();
    assert_eq!(
        c.inference,
        InferenceConfig {
            threads: crate::speech::scheduler::available_cores(),
            candle_threads: 1,
        }
    );
    let c = Config::parse(
        &format!("{GOOD}\n[inference]\nthreads = 3\ncandle_threads = 2\n"),
        "good.toml",
        ConfigSource::Embedded,
    )
    .unwrap();
    assert_eq!((c.inference.threads, c.inference.candle_threads), (3, 2));
    let p = one_problem(&format!("{GOOD}\n[inference]\nthreads = 0\n"));
    assert_eq!(p.key, "inference.threads");
    assert_eq!(p.valid, "1 to 256");
}

#[test]
fn endpoint_keys_default_and_are_checked() {
    let c = Config::parse(GOOD, "good.toml", ConfigSource::Embedded).unwrap();
    assert_eq!(c.endpoint.silence_window_ms, 700);
    let text = format!(
        "{GOOD}\n[endpoint]\nsilence_window_ms = 900\nearly_pause_ms = 150\nsmart_turn_threshold = 0.7\n"
    );
    let c = Config::parse(&text, "t.toml", ConfigSource::Embedded).unwrap();
    assert_eq!(
        (c.endpoint.silence_window_ms, c.endpoint.early_pause_ms),
        (900, 150)
    );
    assert!((c.endpoint.smart_turn_threshold - 0.7).abs() < 1e-6);
    let p = one_problem(&format!("{GOOD}\n[endpoint]\nsmart_turn_threshold = 1.5\n"));
    assert_eq!(p.key, "endpoint.smart_turn_threshold");
    let p = one_problem(&format!(
        "{GOOD}\n[endpoint]\nsilence_window_ms = 400\nearly_pause_ms = 400\n"
    ));
    assert_eq!(p.key, "endpoint.early_pause_ms");
    assert!(p.message.contains("not shorter"), "{p:?}");
    assert_eq!(
        (c.endpoint.confirm_pause_ms, c.endpoint.dictation_window_ms),
        (200, 1_500)
    );
    let p = one_problem(&format!(
        "{GOOD}\n[endpoint]\nsilence_window_ms = 600\ndictation_window_ms = 500\n"
    ));
    assert_eq!(p.key, "endpoint.dictation_window_ms");
    let p = one_problem(&format!("{GOOD}\n[endpoint]\nconfirm_pause_ms = 900\n"));
    assert_eq!(p.key, "endpoint.confirm_pause_ms");
}
