//! Mosquitto's `acl_file`: `topic` rules for anonymous clients and for each
//! `user` block, and `pattern` rules (with `%c` / `%u` substituted) for every
//! client. [`AclFile::access_for`] resolves one client's rights at CONNECT;
//! the result answers with Mosquitto 2's default check (see [`Access`]
//! impl below).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::access::{Access, Grant};

mod parse;
mod relation;
mod rules;

use parse::Line;
pub use parse::{AclErrorKind, AclFileError};
use rules::{verdict, Rule, RuleSet, Summary, READ, WRITE};

/// A parsed ACL file, shared (behind an `Arc`) by every client's [`Access`].
pub struct AclFile {
    anonymous: Arc<RuleSet>,
    users: HashMap<Box<str>, Arc<RuleSet>>,
    /// The list of a username without a block.
    no_rules: Arc<RuleSet>,
    /// Patterns without `%c` or `%u`: the same for everyone, so shared.
    patterns: RuleSet,
    templates: Vec<Template>,
    rule_count: usize,
}

/// A pattern that needs the client id and/or username.
#[derive(Debug)]
struct Template {
    filter: Box<str>,
    bits: u8,
    client_id: bool,
    username: bool,
}

impl Template {
    fn new(filter: &str, bits: u8) -> Template {
        Template {
            filter: filter.into(),
            bits,
            client_id: filter.contains("%c"),
            username: filter.contains("%u"),
        }
    }

    /// The rule for this client, if the pattern applies to it: not when `%u`
    /// has no username, nor when a substituted value holds a wildcard, which
    /// would widen the rule (`+` as client id would mean every client).
    fn apply(&self, client_id: &str, username: Option<&str>) -> Option<Rule> {
        let wild = |s: &str| s.contains(['+', '#']);
        if self.client_id && wild(client_id) {
            return None;
        }
        let username = if self.username {
            username.filter(|u| !wild(u))?
        } else {
            ""
        };
        Some(Rule {
            filter: substitute(&self.filter, client_id, username).into(),
            bits: self.bits,
        })
    }
}

/// Replaces `%c` and `%u` in one pass, so a client id containing `%u` is
/// not substituted again.
fn substitute(template: &str, client_id: &str, username: &str) -> String {
    let mut out = String::with_capacity(template.len() + client_id.len() + username.len());
    let mut rest = template;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        match rest.as_bytes().first() {
            Some(b'c') => out.push_str(client_id),
            Some(b'u') => out.push_str(username),
            _ => {
                out.push('%');
                continue;
            }
        }
        rest = &rest[1..];
    }
    out.push_str(rest);
    out
}

/// Collects rules line by line, then freezes them into an [`AclFile`].
#[derive(Default)]
struct Builder {
    anonymous: Vec<Rule>,
    users: HashMap<Box<str>, Vec<Rule>>,
    /// The `user` block being read; `None` before the first one.
    block: Option<(Box<str>, Vec<Rule>)>,
    patterns: Vec<Rule>,
    templates: Vec<Template>,
    rule_count: usize,
}

impl Builder {
    fn add(&mut self, line: Line<'_>) {
        let (filter, bits) = match line {
            Line::User(name) => {
                self.end_block();
                self.block = Some((name.into(), Vec::new()));
                return;
            }
            Line::Topic(filter, bits) | Line::Pattern(filter, bits) => (filter, bits),
        };
        self.rule_count += 1;
        let rule = Rule {
            filter: filter.into(),
            bits,
        };
        match line {
            Line::Topic(..) => match &mut self.block {
                Some((_, rules)) => rules.push(rule),
                None => self.anonymous.push(rule),
            },
            _ if filter.contains("%c") || filter.contains("%u") => {
                self.templates.push(Template::new(filter, bits));
            }
            _ => self.patterns.push(rule),
        }
    }

    /// A repeated `user` block continues the earlier one, as in Mosquitto.
    fn end_block(&mut self) {
        if let Some((name, rules)) = self.block.take() {
            self.users.entry(name).or_default().extend(rules);
        }
    }

    fn finish(mut self) -> AclFile {
        self.end_block();
        AclFile {
            anonymous: Arc::new(RuleSet::new(self.anonymous)),
            users: (self.users.into_iter())
                .map(|(name, rules)| (name, Arc::new(RuleSet::new(rules))))
                .collect(),
            no_rules: Arc::new(RuleSet::new(Vec::new())),
            patterns: RuleSet::new(self.patterns),
            templates: self.templates,
            rule_count: self.rule_count,
        }
    }
}

impl AclFile {
    /// Parses the text of an ACL file; the error names the first bad line.
    pub fn parse(text: &str) -> Result<AclFile, AclFileError> {
        let mut builder = Builder::default();
        for (i, text) in text.lines().enumerate() {
            let line = parse::line(text).map_err(|kind| AclFileError { line: i + 1, kind })?;
            if let Some(line) = line {
                builder.add(line);
            }
        }
        Ok(builder.finish())
    }

    /// Reads and parses an ACL file; the error names the path and the line.
    pub fn load(path: &Path) -> anyhow::Result<AclFile> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading ACL file {}", path.display()))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            let line = 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            anyhow::anyhow!("ACL file {}: line {line}: not UTF-8", path.display())
        })?;
        AclFile::parse(text).map_err(|e| anyhow::anyhow!("ACL file {}: {e}", path.display()))
    }

    /// One client's rights. Shares the file and the client's rule list; only
    /// the patterns that mention `%c` or `%u` are built per client.
    pub fn access_for(
        self: &Arc<Self>,
        client_id: &str,
        username: Option<&str>,
    ) -> Arc<dyn Access> {
        let own = match username {
            None => &self.anonymous,
            Some(name) => self.users.get(name).unwrap_or(&self.no_rules),
        };
        let patterns = (self.templates.iter())
            .filter_map(|t| t.apply(client_id, username))
            .collect();
        Arc::new(ClientAccess {
            file: Arc::clone(self),
            own: Arc::clone(own),
            patterns: RuleSet::new(patterns),
        })
    }

    /// The number of `topic` and `pattern` lines.
    pub fn rule_count(&self) -> usize {
        self.rule_count
    }
}

impl fmt::Debug for AclFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclFile")
            .field("rules", &self.rule_count)
            .field("users", &self.users.len())
            .field("patterns", &(self.patterns.len() + self.templates.len()))
            .finish()
    }
}

/// One client's view of an [`AclFile`].
struct ClientAccess {
    file: Arc<AclFile>,
    /// Its `user` block, or the anonymous rules.
    own: Arc<RuleSet>,
    /// Its substituted patterns (the others are in `file`).
    patterns: RuleSet,
}

impl ClientAccess {
    /// Mosquitto 2's default check: the client's own list decides if it can
    /// (deny rules first), then the patterns the same way, else denied.
    fn allows(&self, topic: &str, want: u8) -> bool {
        verdict(self.own.bits(topic), want)
            .or_else(|| {
                let bits = self.file.patterns.bits(topic) | self.patterns.bits(topic);
                verdict(bits, want)
            })
            .unwrap_or(false)
    }
}

impl Access for ClientAccess {
    fn may_publish(&self, topic: &str) -> bool {
        self.allows(topic, WRITE)
    }

    fn may_read(&self, topic: &str) -> bool {
        self.allows(topic, READ)
    }

    /// Exact for filters without wildcards (one topic); for the others, a
    /// summary of the rules intersecting and covering the filter in each
    /// layer, falling back to `Checked` when it cannot tell.
    fn subscribe(&self, filter: &str) -> Grant {
        if !filter.contains(['+', '#']) {
            return if self.may_read(filter) {
                Grant::All
            } else {
                Grant::Refused
            };
        }
        let mut own = Summary::default();
        self.own.summarize(filter, &mut own);
        let mut patterns = Summary::default();
        self.file.patterns.summarize(filter, &mut patterns);
        self.patterns.summarize(filter, &mut patterns);
        if own.denies_all() || (own.allows_none() && patterns.allows_none()) {
            Grant::Refused
        } else if own.allows_all() || (own.decides_none() && patterns.allows_all()) {
            Grant::All
        } else {
            Grant::Checked
        }
    }
}

impl fmt::Debug for ClientAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAccess")
            .field("own", &self.own)
            .field("patterns", &self.patterns)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
