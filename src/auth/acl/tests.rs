use std::io::Write;

use proptest::prelude::*;

use super::relation::tests::{all_topics, filter};
use super::*;
use crate::topic::matches;

fn acl(text: &str) -> Arc<AclFile> {
    Arc::new(AclFile::parse(text).unwrap())
}

fn err_line(text: &str) -> usize {
    AclFile::parse(text).unwrap_err().line
}

#[test]
fn parse_errors_name_their_line() {
    assert_eq!(err_line("bogus"), 1);
    assert_eq!(err_line("# c\n\ntopic a\nuser\n"), 4);
    assert_eq!(err_line("topic a\r\ntopic read\r\n"), 2);
    assert_eq!(err_line("user u\ntopic a\npattern a/#/b"), 3);
    let e = AclFile::parse("\n\nfoo bar").unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 3: unknown keyword \"foo\": expected `topic`, `pattern` or `user`"
    );
}

#[test]
fn rule_count_and_repeated_blocks() {
    let file = acl("topic a\nuser u\ntopic b\n# x\npattern c\nuser v\nuser u\ntopic d\npattern %c");
    assert_eq!(file.rule_count(), 5);
    let u = file.access_for("id", Some("u"));
    assert!(u.may_read("b") && u.may_read("d") && !u.may_read("a"));
    assert!(u.may_read("c"), "patterns apply wherever they appear");
}

#[test]
fn load_names_path_and_line() {
    let dir = std::env::temp_dir().join(format!("ringmq-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("acl");
    std::fs::write(&path, "topic a\nuser u\ntopic +x\n").unwrap();
    let msg = AclFile::load(&path).unwrap_err().to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("line 3"),
        "{msg}"
    );
    std::fs::File::create(&path)
        .unwrap()
        .write_all(b"topic a\n\xff\n")
        .unwrap();
    let msg = AclFile::load(&path).unwrap_err().to_string();
    assert!(msg.contains("line 2: not UTF-8"), "{msg}");
    std::fs::write(&path, "user u\ntopic read a/#\n").unwrap();
    assert_eq!(AclFile::load(&path).unwrap().rule_count(), 1);
    let missing = format!("{:#}", AclFile::load(&dir.join("nope")).unwrap_err());
    assert!(missing.contains("nope"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn deny_before_allow_whatever_the_order() {
    let file = acl("user u\ntopic a/#\ntopic deny a/secret\ntopic read b/#\ntopic deny b/+/x");
    let u = file.access_for("c", Some("u"));
    assert!(u.may_read("a/open") && u.may_publish("a/open"));
    assert!(!u.may_read("a/secret") && !u.may_publish("a/secret"));
    assert!(u.may_read("b/q") && !u.may_publish("b/q"));
    assert!(!u.may_read("b/q/x"));
}

#[test]
fn user_layer_before_patterns() {
    let file =
        acl("user u\ntopic read x\ntopic deny y\npattern deny x\npattern write x\npattern y");
    let u = file.access_for("c", Some("u"));
    assert!(
        u.may_read("x"),
        "the user's read decides before the pattern deny"
    );
    assert!(
        !u.may_publish("x"),
        "write falls to the patterns, whose deny wins"
    );
    assert!(!u.may_read("y") && !u.may_publish("y"));
    let file = acl("user u\ntopic read x\npattern write x");
    assert!(file.access_for("c", Some("u")).may_publish("x"));
}

#[test]
fn anonymous_rules_only_without_username() {
    let file = acl("topic anon/#\nuser u\ntopic mine/#\npattern all/#");
    let anon = file.access_for("c", None);
    let u = file.access_for("c", Some("u"));
    let stranger = file.access_for("c", Some("v"));
    assert!(anon.may_read("anon/a") && !anon.may_read("mine/a"));
    assert!(!u.may_read("anon/a") && u.may_read("mine/a"));
    assert!(!stranger.may_read("anon/a") && !stranger.may_read("mine/a"));
    for access in [&anon, &u, &stranger] {
        assert!(access.may_publish("all/x"));
        assert!(!access.may_publish("other"));
    }
}

#[test]
fn substitution() {
    let file = acl("pattern write d/%c/out\npattern read u/%u/#\npattern read %u-%c/%x%");
    let a = file.access_for("dev1", Some("ann"));
    assert!(a.may_publish("d/dev1/out") && !a.may_publish("d/dev2/out"));
    assert!(a.may_read("u/ann/x") && !a.may_read("u/bob/x"));
    assert!(a.may_read("ann-dev1/%x%"));
    let anon = file.access_for("dev1", None);
    assert!(anon.may_publish("d/dev1/out"));
    assert!(
        !anon.may_read("u//x") && !anon.may_read("u/x"),
        "%u needs a username"
    );
    // One pass: a client id holding `%u` stays literal.
    let tricky = file.access_for("%u", Some("ann"));
    assert!(tricky.may_publish("d/%u/out") && !tricky.may_publish("d/ann/out"));
    let slash = file.access_for("a/b", None);
    assert!(slash.may_publish("d/a/b/out"));
}

#[test]
fn no_wildcard_injection() {
    let file = acl("pattern d/%c/#\npattern u/%u\npattern common");
    for id in ["+", "#", "a+b", "x/#"] {
        let c = file.access_for(id, Some("u"));
        assert!(!c.may_read("d/anything/x"), "{id}");
        assert!(!c.may_read(&format!("d/{id}")), "{id}");
        assert!(
            c.may_read("u/u") && c.may_read("common"),
            "other patterns still apply"
        );
    }
    let c = file.access_for("ok", Some("+"));
    assert!(!c.may_read("u/x") && !c.may_read("u/+"));
    assert!(c.may_read("d/ok/x"));
}

#[test]
fn dollar_topics_need_a_dollar_rule() {
    let file = acl("topic #\ntopic +/x\npattern read $SYS/broker/#");
    let c = file.access_for("c", None);
    assert!(c.may_read("a/b") && c.may_publish("a"));
    assert!(!c.may_publish("$SYS/x") && !c.may_read("$SYS/x") && !c.may_read("$q/x"));
    assert!(c.may_read("$SYS/broker/load"));
    assert_eq!(c.subscribe("#"), Grant::All);
    assert_eq!(c.subscribe("$SYS/#"), Grant::Checked);
    assert_eq!(c.subscribe("$SYS/broker/+"), Grant::All);
    assert_eq!(c.subscribe("$q/#"), Grant::Refused);
}

#[test]
fn subscribe_grants() {
    let file = acl(
        "user u\ntopic read a/#\ntopic deny a/secret/#\ntopic write w/#\ntopic read p/#\n\
         pattern read w/#\npattern read q/%c/#\npattern deny p/x",
    );
    let u = file.access_for("c", Some("u"));
    assert_eq!(u.subscribe("a/open/+"), Grant::All);
    assert_eq!(u.subscribe("a/+"), Grant::Checked);
    assert_eq!(u.subscribe("a/secret/+"), Grant::Refused);
    assert_eq!(u.subscribe("a/secret"), Grant::Refused);
    assert_eq!(u.subscribe("a/open"), Grant::All);
    assert_eq!(
        u.subscribe("w/#"),
        Grant::All,
        "write-only rules defer to patterns"
    );
    assert_eq!(u.subscribe("q/c/#"), Grant::All);
    assert_eq!(u.subscribe("q/+/#"), Grant::Checked);
    assert_eq!(
        u.subscribe("p/#"),
        Grant::All,
        "the user layer decides first"
    );
    assert_eq!(u.subscribe("z/#"), Grant::Refused);
    assert_eq!(u.subscribe("#"), Grant::Checked);
}

#[test]
fn access_for_shares_the_user_block() {
    let file = acl("user u\ntopic a\nuser v\ntopic b");
    let (_a, _b) = (
        file.access_for("1", Some("u")),
        file.access_for("2", Some("u")),
    );
    assert_eq!(Arc::strong_count(&file.users["u"]), 3);
    assert_eq!(Arc::strong_count(&file.users["v"]), 1);
    assert_eq!(Arc::strong_count(&file), 3);
}

/// Mosquitto's check written out naively: each list in turn, deny rules
/// first, then a rule granting the access.
fn reference(own: &[(String, u8)], patterns: &[(String, u8)], topic: &str, want: u8) -> bool {
    for list in [own, patterns] {
        let hits = || list.iter().filter(|(f, _)| matches(f, topic));
        if hits().any(|(_, bits)| bits & rules::DENY != 0) {
            return false;
        }
        if hits().any(|(_, bits)| bits & want != 0) {
            return true;
        }
    }
    false
}

const WORDS: [&str; 4] = ["read", "write", "readwrite", "deny"];
const BITS: [u8; 4] = [READ, WRITE, READ | WRITE, rules::DENY];

fn rules_strategy() -> impl Strategy<Value = Vec<(String, usize)>> {
    prop::collection::vec((filter(), 0..4usize), 0..12)
}

fn lines(kind: &str, rules: &[(String, usize)]) -> String {
    rules
        .iter()
        .map(|(f, a)| format!("{kind} {} {f}\n", WORDS[*a]))
        .collect()
}

fn with_bits(rules: &[(String, usize)]) -> Vec<(String, u8)> {
    rules
        .iter()
        .map(|(f, a)| (f.replace("%c", "b"), BITS[*a]))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Decisions agree with the naive reference on every small topic (both
    /// the scan and, past 8 rules, the trie), and grants are sound.
    #[test]
    fn decisions_and_grants(
        anon in rules_strategy(),
        user in rules_strategy(),
        patterns in prop::collection::vec(((filter(), any::<bool>()), 0..4usize), 0..12),
        f in filter(),
    ) {
        let patterns: Vec<(String, usize)> = patterns
            .into_iter()
            .map(|((p, sub), a)| (if sub { p.replace('b', "%c") } else { p }, a))
            .collect();
        let text = format!("{}user u\n{}{}", lines("topic", &anon), lines("topic", &user),
            lines("pattern", &patterns));
        let file = acl(&text);
        let pats = with_bits(&patterns);
        let topics = all_topics();
        for (name, own) in [(None, with_bits(&anon)), (Some("u"), with_bits(&user)), (Some("v"), vec![])] {
            let access = file.access_for("b", name);
            for t in &topics {
                prop_assert_eq!(access.may_read(t), reference(&own, &pats, t, READ), "read {} {:?}", t, name);
                prop_assert_eq!(access.may_publish(t), reference(&own, &pats, t, WRITE), "write {} {:?}", t, name);
            }
            let mut in_f = topics.iter().filter(|t| matches(&f, t));
            match access.subscribe(&f) {
                Grant::All => prop_assert!(in_f.all(|t| access.may_read(t)), "All {} {:?}", f, name),
                Grant::Refused => prop_assert!(!in_f.any(|t| access.may_read(t)), "Refused {} {:?}", f, name),
                Grant::Checked => {}
            }
        }
    }

    #[test]
    fn parse_never_panics(text in ".{0,200}") {
        let _ = AclFile::parse(&text);
    }

    #[test]
    fn parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = AclFile::parse(&String::from_utf8_lossy(&bytes));
    }

    /// Near-miss files built from the format's own tokens reach every branch.
    #[test]
    fn parse_tokens(tokens in prop::collection::vec(prop::sample::select(vec![
        "topic", "pattern", "user", "read", "write", "readwrite", "deny", " ", "\t", "\n", "\r\n",
        "#", "+", "/", "%c", "%u", "a", "$SYS", "\0", "é",
    ]), 0..40)) {
        let text = tokens.concat();
        if let Ok(file) = AclFile::parse(&text).map(Arc::new) {
            prop_assert!(file.rule_count() <= text.lines().count());
            let c = file.access_for("+", Some("#"));
            let _ = (c.may_read("a"), c.may_publish("a/b"), c.subscribe("#"));
        }
    }
}
