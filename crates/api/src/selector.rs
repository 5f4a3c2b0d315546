//! Label and field selectors, as k8s.io/apimachinery/pkg/labels and pkg/fields parse, print
//! and match them, and the per-kind field labels the API server lets clients select on
//! (the upstream field label conversion functions and `ToSelectableFields`).
//!
//! Must not depend on anything that does IO.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde_json::{Map, Value};

use crate::names;

/// Why a selector was rejected. The message is the one upstream prints; the API server
/// answers it as a 400 BadRequest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A label selector that does not parse or holds an invalid requirement.
    #[error("{0}")]
    Label(String),
    /// A field selector that does not parse.
    #[error("{0}")]
    Field(String),
    /// A field selector naming a field the kind does not support.
    #[error("{0}")]
    UnsupportedField(String),
}

/// A set of labels to match a selector against.
pub trait Labels {
    /// The value of label `key`, if set.
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for HashMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A JSON object of labels (`metadata.labels`); values that are not strings are absent.
impl Labels for Map<String, Value> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
}

/// `metadata.labels` as a JSON value; `null` or anything but an object has no labels.
impl Labels for Value {
    fn label(&self, key: &str) -> Option<&str> {
        self.as_object().and_then(|m| m.label(key))
    }
}

/// A label selector operator (upstream `selection.Operator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

impl Operator {
    /// The upstream spelling (`selection.Operator` string).
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => "in",
            Operator::NotIn => "notin",
            Operator::Exists => "exists",
            Operator::DoesNotExist => "!",
            Operator::GreaterThan => "gt",
            Operator::LessThan => "lt",
        }
    }
}

/// One requirement of a label selector: `key op values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// One validation error of a requirement, formatted as upstream's `field.Error`.
fn invalid(path: &str, shown_value: &str, detail: &str) -> String {
    format!("{path}: Invalid value: {shown_value}: {detail}")
}

/// Go's `%q` of a string (close enough: Rust's `Debug` escapes the same ASCII characters).
fn quote(s: &str) -> String {
    format!("{s:?}")
}

/// Go's `%#v` of a `[]string`.
fn go_string_slice(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| quote(s)).collect();
    format!("[]string{{{}}}", items.join(", "))
}

/// Upstream `utilerrors.NewAggregate(...).Error()`: one message alone, several deduplicated in brackets.
fn aggregate(errs: Vec<String>) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<String> = errs
        .into_iter()
        .filter(|e| seen.insert(e.clone()))
        .collect();
    match unique.len() {
        0 => None,
        1 => unique.into_iter().next(),
        _ => Some(format!("[{}]", unique.join(", "))),
    }
}

fn validate_label_key(key: &str, path: &str) -> Option<String> {
    let errs = names::is_qualified_name(key);
    if errs.is_empty() {
        None
    } else {
        Some(invalid(path, &quote(key), &errs.join("; ")))
    }
}

impl Requirement {
    /// Upstream `labels.NewRequirement`: validate and build.
    pub fn new(key: &str, operator: Operator, values: Vec<String>) -> Result<Self, SelectorError> {
        let mut errs = Vec::new();
        if let Some(e) = validate_label_key(key, "key") {
            errs.push(e);
        }
        match operator {
            Operator::In | Operator::NotIn => {
                if values.is_empty() {
                    errs.push(invalid(
                        "values",
                        &go_string_slice(&values),
                        "for 'in', 'notin' operators, values set can't be empty",
                    ));
                }
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals => {
                if values.len() != 1 {
                    errs.push(invalid(
                        "values",
                        &go_string_slice(&values),
                        "exact-match compatibility requires one single value",
                    ));
                }
            }
            Operator::Exists | Operator::DoesNotExist => {
                if !values.is_empty() {
                    errs.push(invalid(
                        "values",
                        &go_string_slice(&values),
                        "values set must be empty for exists and does not exist",
                    ));
                }
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(invalid(
                        "values",
                        &go_string_slice(&values),
                        "for 'Gt', 'Lt' operators, exactly one value is required",
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(invalid(
                            &format!("values[{i}]"),
                            &quote(v),
                            "for 'Gt', 'Lt' operators, the value must be an integer",
                        ));
                    }
                }
            }
        }
        for (i, v) in values.iter().enumerate() {
            let msgs = names::is_valid_label_value(v);
            if !msgs.is_empty() {
                errs.push(invalid(
                    &format!("values[{i}][{key}]"),
                    &quote(v),
                    &msgs.join("; "),
                ));
            }
        }
        match aggregate(errs) {
            Some(msg) => Err(SelectorError::Label(msg)),
            None => Ok(Requirement {
                key: key.to_string(),
                operator,
                values,
            }),
        }
    }

    /// Upstream `Requirement.Matches`.
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        let got = labels.label(&self.key);
        let has = |v: &str| self.values.iter().any(|x| x == v);
        match self.operator {
            Operator::In | Operator::Equals | Operator::DoubleEquals => got.is_some_and(has),
            Operator::NotIn | Operator::NotEquals => !got.is_some_and(has),
            Operator::Exists => got.is_some(),
            Operator::DoesNotExist => got.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let Some(Ok(have)) = got.map(str::parse::<i64>) else {
                    return false;
                };
                let [want] = self.values.as_slice() else {
                    return false;
                };
                let Ok(want) = want.parse::<i64>() else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == Operator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let op = match self.operator {
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
            Operator::Exists | Operator::DoesNotExist => return Ok(()),
        };
        f.write_str(op)?;
        let set = matches!(self.operator, Operator::In | Operator::NotIn);
        if set {
            f.write_str("(")?;
        }
        if self.values.len() == 1 {
            f.write_str(&self.values[0])?;
        } else {
            let mut sorted = self.values.clone();
            sorted.sort();
            f.write_str(&sorted.join(","))?;
        }
        if set {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A label selector: requirements that must all hold. The empty selector matches everything;
/// [`LabelSelector::nothing`] (a null `metav1.LabelSelector`) matches nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    nothing: bool,
}

impl LabelSelector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// The selector that matches nothing.
    pub fn nothing() -> Self {
        Self {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether the selector has no requirements (and so matches everything).
    pub fn is_empty(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    /// Whether every requirement holds for `labels`.
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the object's `metadata.labels` satisfy the selector.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(obj.pointer("/metadata/labels").unwrap_or(&Value::Null))
    }

    /// Upstream `labels.Parse`: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`,
    /// `a>1`, `a<1`, comma-separated.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut parser = Parser {
            items: lex(selector),
            position: 0,
        };
        let mut requirements = parser.parse().map_err(SelectorError::Label)?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            requirements,
            nothing: false,
        })
    }

    /// Upstream `metav1.LabelSelectorAsSelector` of a JSON `metav1.LabelSelector`
    /// (`matchLabels`, `matchExpressions`). `null` matches nothing; `{}` matches everything.
    pub fn from_json(selector: &Value) -> Result<Self, SelectorError> {
        let obj = match selector {
            Value::Null => return Ok(Self::nothing()),
            Value::Object(obj) => obj,
            other => {
                return Err(SelectorError::Label(format!(
                    "label selector must be an object, not {other}"
                )));
            }
        };
        let mut requirements = Vec::new();
        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (k, v) in labels {
                    let Some(v) = v.as_str() else {
                        return Err(SelectorError::Label(format!(
                            "matchLabels[{k}]: must be a string"
                        )));
                    };
                    requirements.push(Requirement::new(k, Operator::Equals, vec![v.to_string()])?);
                }
            }
            Some(_) => {
                return Err(SelectorError::Label(
                    "matchLabels: must be a map of strings".into(),
                ));
            }
        }
        match obj.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(exprs)) => {
                for expr in exprs {
                    let key = expr.get("key").and_then(Value::as_str).unwrap_or_default();
                    let op = expr
                        .get("operator")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let operator = match op {
                        "In" => Operator::In,
                        "NotIn" => Operator::NotIn,
                        "Exists" => Operator::Exists,
                        "DoesNotExist" => Operator::DoesNotExist,
                        other => {
                            return Err(SelectorError::Label(format!(
                                "{} is not a valid label selector operator",
                                quote(other)
                            )));
                        }
                    };
                    let values = match expr.get("values") {
                        None | Some(Value::Null) => Vec::new(),
                        Some(Value::Array(vs)) => {
                            let mut out = Vec::with_capacity(vs.len());
                            for v in vs {
                                let Some(s) = v.as_str() else {
                                    return Err(SelectorError::Label(
                                        "values: must be a list of strings".into(),
                                    ));
                                };
                                out.push(s.to_string());
                            }
                            out
                        }
                        Some(_) => {
                            return Err(SelectorError::Label(
                                "values: must be a list of strings".into(),
                            ));
                        }
                    };
                    requirements.push(Requirement::new(key, operator, values)?);
                }
            }
            Some(_) => {
                return Err(SelectorError::Label(
                    "matchExpressions: must be a list".into(),
                ));
            }
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            requirements,
            nothing: false,
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Error,
    EndOfString,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

fn keyword(s: &str) -> Option<Token> {
    Some(match s {
        ")" => Token::ClosedPar,
        "," => Token::Comma,
        "!" => Token::DoesNotExist,
        "==" => Token::DoubleEquals,
        "=" => Token::Equals,
        ">" => Token::GreaterThan,
        "in" => Token::In,
        "<" => Token::LessThan,
        "!=" => Token::NotEquals,
        "notin" => Token::NotIn,
        "(" => Token::OpenPar,
        _ => return None,
    })
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Upstream's label selector lexer, run to the end (a NUL byte ends the input, as upstream).
fn lex(input: &str) -> Vec<(Token, String)> {
    let bytes = input.as_bytes();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let bytes = &bytes[..end];
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        while pos < bytes.len() && is_whitespace(bytes[pos]) {
            pos += 1;
        }
        if pos >= bytes.len() {
            out.push((Token::EndOfString, String::new()));
            return out;
        }
        if is_special(bytes[pos]) {
            let start = pos;
            let mut last: Option<(Token, usize)> = None;
            while pos < bytes.len() && is_special(bytes[pos]) {
                let candidate = String::from_utf8_lossy(&bytes[start..=pos]);
                if let Some(tok) = keyword(&candidate) {
                    last = Some((tok, pos + 1));
                } else if last.is_some() {
                    break;
                }
                pos += 1;
            }
            match last {
                Some((tok, stop)) => {
                    out.push((
                        tok,
                        String::from_utf8_lossy(&bytes[start..stop]).into_owned(),
                    ));
                    pos = stop;
                }
                None => {
                    let found = String::from_utf8_lossy(&bytes[start..pos]);
                    out.push((
                        Token::Error,
                        format!("error expected: keyword found '{found}'"),
                    ));
                }
            }
        } else {
            let start = pos;
            while pos < bytes.len() && !is_special(bytes[pos]) && !is_whitespace(bytes[pos]) {
                pos += 1;
            }
            let word = String::from_utf8_lossy(&bytes[start..pos]).into_owned();
            let tok = keyword(&word).unwrap_or(Token::Identifier);
            out.push((tok, word));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    KeyAndOperator,
    Values,
}

struct Parser {
    items: Vec<(Token, String)>,
    position: usize,
}

const BINARY_OPERATORS: &str = "in, notin, =, ==, !=, gt, lt";

impl Parser {
    fn item(&self, at: usize, context: Context) -> (Token, String) {
        let (tok, lit) = self
            .items
            .get(at)
            .cloned()
            .unwrap_or((Token::EndOfString, String::new()));
        let tok = match tok {
            Token::In | Token::NotIn if context == Context::Values => Token::Identifier,
            other => other,
        };
        (tok, lit)
    }

    fn lookahead(&self, context: Context) -> (Token, String) {
        self.item(self.position, context)
    }

    fn consume(&mut self, context: Context) -> (Token, String) {
        let out = self.item(self.position, context);
        self.position += 1;
        out
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut requirements = Vec::new();
        loop {
            let (tok, lit) = self.lookahead(Context::Values);
            match tok {
                Token::Identifier | Token::DoesNotExist => {
                    let r = self
                        .parse_requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    requirements.push(r);
                    let (t, l) = self.consume(Context::Values);
                    match t {
                        Token::EndOfString => return Ok(requirements),
                        Token::Comma => {
                            let (t2, l2) = self.lookahead(Context::Values);
                            if t2 != Token::Identifier && t2 != Token::DoesNotExist {
                                return Err(format!(
                                    "found '{l2}', expected: identifier after ','"
                                ));
                            }
                        }
                        _ => return Err(format!("found '{l}', expected: ',' or 'end of string'")),
                    }
                }
                Token::EndOfString => return Ok(requirements),
                _ => {
                    return Err(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    ));
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, String> {
        let (key, operator) = self.parse_key_and_infer_operator()?;
        if let Some(op @ (Operator::Exists | Operator::DoesNotExist)) = operator {
            return Requirement::new(&key, op, Vec::new()).map_err(|e| e.to_string());
        }
        let operator = self.parse_operator()?;
        let values = match operator {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(&key, operator, values).map_err(|e| e.to_string())
    }

    fn parse_key_and_infer_operator(&mut self) -> Result<(String, Option<Operator>), String> {
        let mut operator = None;
        let (mut tok, mut lit) = self.consume(Context::Values);
        if tok == Token::DoesNotExist {
            operator = Some(Operator::DoesNotExist);
            (tok, lit) = self.consume(Context::Values);
        }
        if tok != Token::Identifier {
            return Err(format!("found '{lit}', expected: identifier"));
        }
        if let Some(e) = validate_label_key(&lit, "<nil>") {
            return Err(e);
        }
        let (next, _) = self.lookahead(Context::Values);
        if (next == Token::EndOfString || next == Token::Comma) && operator.is_none() {
            operator = Some(Operator::Exists);
        }
        Ok((lit, operator))
    }

    fn parse_operator(&mut self) -> Result<Operator, String> {
        let (tok, lit) = self.consume(Context::KeyAndOperator);
        Ok(match tok {
            Token::In => Operator::In,
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::GreaterThan => Operator::GreaterThan,
            Token::LessThan => Operator::LessThan,
            Token::NotIn => Operator::NotIn,
            Token::NotEquals => Operator::NotEquals,
            _ => return Err(format!("found '{lit}', expected: {BINARY_OPERATORS}")),
        })
    }

    /// `(x,y,z)`: a sorted set of values; `()` is the set holding "".
    fn parse_values(&mut self) -> Result<Vec<String>, String> {
        let (tok, lit) = self.consume(Context::Values);
        if tok != Token::OpenPar {
            return Err(format!("found '{lit}' expected: '('"));
        }
        let (tok, lit) = self.lookahead(Context::Values);
        match tok {
            Token::Identifier | Token::Comma => {
                let set = self.parse_identifiers_list()?;
                let (closing, _) = self.consume(Context::Values);
                if closing != Token::ClosedPar {
                    return Err(format!("found '{lit}', expected: ')'"));
                }
                Ok(set)
            }
            Token::ClosedPar => {
                self.consume(Context::Values);
                Ok(vec![String::new()])
            }
            _ => Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<Vec<String>, String> {
        let mut set: BTreeSet<String> = BTreeSet::new();
        let insert = |set: &mut BTreeSet<String>, v: String| {
            set.insert(v);
        };
        loop {
            let (tok, lit) = self.consume(Context::Values);
            match tok {
                Token::Identifier => {
                    insert(&mut set, lit);
                    let (tok2, lit2) = self.lookahead(Context::Values);
                    match tok2 {
                        Token::Comma => continue,
                        Token::ClosedPar => return Ok(set.into_iter().collect()),
                        _ => return Err(format!("found '{lit2}', expected: ',' or ')'")),
                    }
                }
                Token::Comma => {
                    if set.is_empty() {
                        insert(&mut set, String::new());
                    }
                    let (tok2, _) = self.lookahead(Context::Values);
                    if tok2 == Token::ClosedPar {
                        insert(&mut set, String::new());
                        return Ok(set.into_iter().collect());
                    }
                    if tok2 == Token::Comma {
                        self.consume(Context::Values);
                        insert(&mut set, String::new());
                    }
                }
                _ => return Err(format!("found '{lit}', expected: ',', or identifier")),
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<Vec<String>, String> {
        let (tok, _) = self.lookahead(Context::Values);
        if tok == Token::EndOfString || tok == Token::Comma {
            return Ok(vec![String::new()]);
        }
        let (tok, lit) = self.consume(Context::Values);
        if tok == Token::Identifier {
            return Ok(vec![lit]);
        }
        Err(format!("found '{lit}', expected: identifier"))
    }
}

/// One term of a field selector: `field=value` or `field!=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTerm {
    pub field: String,
    pub value: String,
    /// `!=` rather than `=`/`==`.
    pub negated: bool,
}

/// A field selector (upstream `fields.ParseSelector`): terms that must all hold. A field the
/// object lacks has the value "".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

/// Upstream `fields.EscapeValue`.
pub fn escape_field_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace('=', "\\=")
}

/// Upstream `fields.UnescapeValue`.
fn unescape_field_value(s: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                other => {
                    return Err(SelectorError::Field(format!(
                        "invalid field selector: invalid escape sequence: \\{other}"
                    )));
                }
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => {
                // Upstream prints the rune with %v: its code point.
                return Err(SelectorError::Field(format!(
                    "invalid field selector: unescaped character in value: {}",
                    u32::from(c)
                )));
            }
            other => out.push(other),
        }
    }
    if in_slash {
        return Err(SelectorError::Field(
            "invalid field selector: invalid escape sequence: \\".into(),
        ));
    }
    Ok(out)
}

/// Split on commas not escaped by a backslash (upstream `splitTerms`).
fn split_terms(selector: &str) -> Vec<&str> {
    if selector.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in selector.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&selector[start..i]);
            start = i + 1;
        }
    }
    terms.push(&selector[start..]);
    terms
}

impl FieldSelector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Upstream `fields.ParseSelector`: `a=b`, `a==b`, `a!=b`, comma-separated, values escaped
    /// with backslashes. No whitespace trimming, as upstream.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut parts = split_terms(selector);
        parts.sort_unstable();
        let mut terms = Vec::new();
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let Some((field, op, rhs)) = split_term(part) else {
                return Err(SelectorError::Field(format!(
                    "invalid selector: '{selector}'; can't understand '{part}'"
                )));
            };
            let value = unescape_field_value(rhs)?;
            terms.push(FieldTerm {
                field: field.to_string(),
                value,
                negated: op == "!=",
            });
        }
        Ok(FieldSelector { terms })
    }

    /// Upstream `RequiresExactMatch`: the value a `field=value` term pins the field to (used to
    /// index watches such as a node agent's `spec.nodeName=<node>`).
    pub fn requires_exact_match(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.field == field && !t.negated)
            .map(|t| t.value.as_str())
    }

    pub fn terms(&self) -> &[FieldTerm] {
        &self.terms
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether every term holds, `get` giving the value of a field (None = "").
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.terms.iter().all(|t| {
            let have = get(&t.field).unwrap_or_default();
            (have == t.value) != t.negated
        })
    }

    /// Reject a selector naming a field `group`/`kind` does not support (what the API server
    /// does before listing or watching).
    pub fn check_supported(&self, group: &str, kind: &str) -> Result<(), SelectorError> {
        for t in &self.terms {
            field_value(group, kind, &Value::Null, &t.field)?;
        }
        Ok(())
    }

    /// Whether `obj` of `group`/`kind` matches, with the kind's supported field labels.
    pub fn matches_object(
        &self,
        group: &str,
        kind: &str,
        obj: &Value,
    ) -> Result<bool, SelectorError> {
        for t in &self.terms {
            let have = field_value(group, kind, obj, &t.field)?.unwrap_or_default();
            if (have == t.value) == t.negated {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The first of `!=`, `==`, `=` found scanning left to right (upstream `splitTerm`).
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for op in ["!=", "==", "="] {
            if let Some(rhs) = rest.strip_prefix(op) {
                return Some((&term[..i], op, rhs));
            }
        }
    }
    None
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = if t.negated { "!=" } else { "=" };
            write!(f, "{}{op}{}", t.field, escape_field_value(&t.value))?;
        }
        Ok(())
    }
}

fn not_supported(field: &str) -> SelectorError {
    SelectorError::UnsupportedField(format!("field label not supported: {field}"))
}

fn not_known(field: &str) -> SelectorError {
    SelectorError::UnsupportedField(format!(
        "\"{field}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
    ))
}

fn string_at(obj: &Value, pointer: &str) -> Option<String> {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn int_at(obj: &Value, pointer: &str) -> String {
    obj.pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .to_string()
}

/// The value of field label `field` of `obj` (of `group`/`kind`), as the API server's field
/// selectors see it; `Ok(None)` when the object lacks it (which compares as "").
/// A field the kind does not support is an error with upstream's message for that kind.
pub fn field_value(
    group: &str,
    kind: &str,
    obj: &Value,
    field: &str,
) -> Result<Option<String>, SelectorError> {
    let name = || string_at(obj, "/metadata/name");
    let namespace = || string_at(obj, "/metadata/namespace");
    Ok(match (group, kind) {
        ("", "Pod") => match field {
            "metadata.name" => name(),
            "metadata.namespace" => namespace(),
            // spec.host: what old v1 clients send.
            "spec.nodeName" | "spec.host" => string_at(obj, "/spec/nodeName"),
            "spec.restartPolicy" => string_at(obj, "/spec/restartPolicy"),
            "spec.schedulerName" => string_at(obj, "/spec/schedulerName"),
            "spec.serviceAccountName" => string_at(obj, "/spec/serviceAccountName"),
            "spec.hostNetwork" => Some(
                obj.pointer("/spec/hostNetwork")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string(),
            ),
            "status.phase" => string_at(obj, "/status/phase"),
            "status.podIP" => {
                string_at(obj, "/status/podIPs/0/ip").or_else(|| string_at(obj, "/status/podIP"))
            }
            // Accepted by the conversion but not among the selectable fields: always "".
            "status.podIPs" => None,
            "status.nominatedNodeName" => string_at(obj, "/status/nominatedNodeName"),
            _ => return Err(not_supported(field)),
        },
        ("", "Event") => match field {
            "metadata.name" => name(),
            "metadata.namespace" => namespace(),
            "involvedObject.kind" => string_at(obj, "/involvedObject/kind"),
            "involvedObject.namespace" => string_at(obj, "/involvedObject/namespace"),
            "involvedObject.name" => string_at(obj, "/involvedObject/name"),
            "involvedObject.uid" => string_at(obj, "/involvedObject/uid"),
            "involvedObject.apiVersion" => string_at(obj, "/involvedObject/apiVersion"),
            "involvedObject.resourceVersion" => string_at(obj, "/involvedObject/resourceVersion"),
            "involvedObject.fieldPath" => string_at(obj, "/involvedObject/fieldPath"),
            "reason" => string_at(obj, "/reason"),
            "reportingComponent" => string_at(obj, "/reportingComponent"),
            "source" => string_at(obj, "/source/component")
                .filter(|s| !s.is_empty())
                .or_else(|| string_at(obj, "/reportingComponent")),
            "type" => string_at(obj, "/type"),
            _ => return Err(not_supported(field)),
        },
        ("events.k8s.io", "Event") => match field {
            "metadata.name" => name(),
            "metadata.namespace" => namespace(),
            "regarding.kind" => string_at(obj, "/regarding/kind"),
            "regarding.namespace" => string_at(obj, "/regarding/namespace"),
            "regarding.name" => string_at(obj, "/regarding/name"),
            "regarding.uid" => string_at(obj, "/regarding/uid"),
            "regarding.apiVersion" => string_at(obj, "/regarding/apiVersion"),
            "regarding.resourceVersion" => string_at(obj, "/regarding/resourceVersion"),
            "regarding.fieldPath" => string_at(obj, "/regarding/fieldPath"),
            "reason" => string_at(obj, "/reason"),
            "type" => string_at(obj, "/type"),
            "reportingController" => string_at(obj, "/reportingController"),
            _ => return Err(not_supported(field)),
        },
        ("", "Namespace") => match field {
            "metadata.name" => name(),
            "status.phase" => string_at(obj, "/status/phase"),
            _ => return Err(not_supported(field)),
        },
        ("", "Node") => match field {
            "metadata.name" => name(),
            "spec.unschedulable" => Some(
                obj.pointer("/spec/unschedulable")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string(),
            ),
            _ => return Err(not_supported(field)),
        },
        ("", "Secret") => match field {
            "metadata.name" => name(),
            "metadata.namespace" => namespace(),
            "type" => string_at(obj, "/type"),
            _ => return Err(not_supported(field)),
        },
        ("", "Service") => match field {
            "metadata.name" => name(),
            "metadata.namespace" => namespace(),
            "spec.clusterIP" => string_at(obj, "/spec/clusterIP"),
            "spec.type" => string_at(obj, "/spec/type"),
            _ => return Err(not_supported(field)),
        },
        ("apps", "ReplicaSet") => match field {
            "metadata.name" => name(),
            "metadata.namespace" => namespace(),
            "status.replicas" => Some(int_at(obj, "/status/replicas")),
            _ => return Err(not_supported(field)),
        },
        ("batch", "Job") => match field {
            "metadata.name" => name(),
            "metadata.namespace" => namespace(),
            "status.successful" => Some(int_at(obj, "/status/succeeded")),
            _ => return Err(not_supported(field)),
        },
        // Every other kind: upstream's default conversion.
        _ => match field {
            "metadata.name" => name(),
            "metadata.namespace" => namespace(),
            _ => return Err(not_known(field)),
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap()
    }

    fn parse_err(s: &str) -> String {
        LabelSelector::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn parse_and_print() {
        let cases = [
            ("", ""),
            ("   ", ""),
            ("x=a", "x=a"),
            ("x==a", "x==a"),
            ("x!=a", "x!=a"),
            ("x=", "x="),
            ("x", "x"),
            ("!x", "!x"),
            ("x>1", "x>1"),
            ("x<1", "x<1"),
            ("x in (b,a)", "x in (a,b)"),
            ("x notin (a)", "x notin (a)"),
            ("x in ()", "x in ()"),
            ("x in (a,,b)", "x in (,a,b)"),
            ("z=1 , a in ( x , y ),  !b", "a in (x,y),!b,z=1"),
            ("app=web,tier!=db", "app=web,tier!=db"),
            ("example.com/key=Value_1", "example.com/key=Value_1"),
            ("in in (in, notin)", "in in (in,notin)"),
            ("a=b\tc", "a=b"),
        ];
        for (input, printed) in cases {
            match LabelSelector::parse(input) {
                Ok(sel) => assert_eq!(sel.to_string(), printed, "{input:?}"),
                Err(e) if input == "a=b\tc" => {
                    assert_eq!(e.to_string(), "found 'c', expected: ',' or 'end of string'");
                }
                Err(e) => panic!("{input:?}: {e}"),
            }
        }
        assert!(parse("").is_empty());
        assert!(!parse("a").is_empty());
    }

    #[test]
    fn parse_errors_as_upstream() {
        assert_eq!(
            parse_err("x in (a"),
            "unable to parse requirement: found '', expected: ',' or ')'"
        );
        assert_eq!(
            parse_err("x in a"),
            "unable to parse requirement: found 'a' expected: '('"
        );
        assert_eq!(
            parse_err("x in (a b)"),
            "unable to parse requirement: found 'b', expected: ',' or ')'"
        );
        assert_eq!(
            parse_err("x in (=)"),
            "unable to parse requirement: found '=', expected: ',', ')' or identifier"
        );
        assert_eq!(parse_err("a,"), "found '', expected: identifier after ','");
        assert_eq!(
            parse_err(",a"),
            "found ',', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            parse_err("a b"),
            "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(
            parse_err("x=a)"),
            "found ')', expected: ',' or 'end of string'"
        );
        assert_eq!(
            parse_err("!"),
            "unable to parse requirement: found '', expected: identifier"
        );
        assert_eq!(
            parse_err("x (a)"),
            "unable to parse requirement: found '(', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(
            parse_err("x=(a)"),
            "unable to parse requirement: found '(', expected: identifier"
        );
        assert_eq!(
            parse_err("!a=b"),
            "found '=', expected: ',' or 'end of string'"
        );
        let e = parse_err("-bad=x");
        assert!(
            e.starts_with("unable to parse requirement: <nil>: Invalid value: \"-bad\": name part must consist of alphanumeric"),
            "{e}"
        );
        let e = parse_err("a=-b");
        assert!(
            e.starts_with("unable to parse requirement: values[0][a]: Invalid value: \"-b\": a valid label must be"),
            "{e}"
        );
        let e = parse_err("a>b");
        assert_eq!(
            e,
            "unable to parse requirement: values[0]: Invalid value: \"b\": for 'Gt', 'Lt' operators, the value must be an integer"
        );
        let e = parse_err("a in (-x,-y)");
        assert!(
            e.starts_with("unable to parse requirement: [values[0][a]: Invalid value: \"-x\""),
            "{e}"
        );
    }

    #[test]
    fn double_equals_error() {
        // `x==` is `x==""`: parse_exact_value sees the end.
        assert_eq!(parse("x==").to_string(), "x==");
    }

    #[test]
    fn matching() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5"), ("empty", "")]);
        let yes = [
            "",
            "app=web",
            "app==web",
            "app!=db",
            "missing!=x",
            "app in (web,api)",
            "app notin (db)",
            "missing notin (x)",
            "app",
            "!missing",
            "n>4",
            "n<6",
            "empty=",
            "empty in ()",
            "app=web,tier=front",
        ];
        for s in yes {
            assert!(parse(s).matches(&l), "{s}");
        }
        let no = [
            "app=db",
            "app!=web",
            "missing=x",
            "missing in (x)",
            "app notin (web)",
            "missing",
            "!app",
            "n>5",
            "n<5",
            "app>1",
            "missing>1",
            "app=web,tier=back",
            "missing=",
        ];
        for s in no {
            assert!(!parse(s).matches(&l), "{s}");
        }
    }

    #[test]
    fn matching_json_labels() {
        let obj = json!({"metadata": {"labels": {"app": "web", "num": 3}}});
        let sel = parse("app=web");
        assert!(sel.matches(&obj["metadata"]["labels"]));
        assert!(sel.matches(obj["metadata"]["labels"].as_object().unwrap()));
        assert!(
            !parse("num").matches(&obj["metadata"]["labels"]),
            "non-string values are absent"
        );
        assert!(!sel.matches(&Value::Null));
        assert!(parse("!app").matches(&Value::Null));
        let h: HashMap<String, String> = [("app".to_string(), "web".to_string())].into();
        assert!(sel.matches(&h));
    }

    #[test]
    fn from_json_shapes() {
        let sel = LabelSelector::from_json(&json!({
            "matchLabels": {"app": "web", "a": "b"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "back"]},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "x", "operator": "Exists"},
                {"key": "y", "operator": "DoesNotExist", "values": []}
            ]
        }))
        .unwrap();
        assert_eq!(
            sel.to_string(),
            "a=b,app=web,env notin (dev),tier in (back,front),x,!y"
        );
        let l = labels(&[("app", "web"), ("a", "b"), ("tier", "back"), ("x", "")]);
        assert!(sel.matches(&l));
        assert!(!sel.matches(&labels(&[("app", "web")])));

        let everything = LabelSelector::from_json(&json!({})).unwrap();
        assert!(everything.is_empty());
        assert!(everything.matches(&labels(&[])));
        let nothing = LabelSelector::from_json(&Value::Null).unwrap();
        assert!(!nothing.is_empty());
        assert!(!nothing.matches(&labels(&[])));
        assert_eq!(nothing.to_string(), "");
    }

    #[test]
    fn from_json_errors() {
        let e = LabelSelector::from_json(
            &json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"Gt\" is not a valid label selector operator"
        );
        let e = LabelSelector::from_json(
            &json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "values: Invalid value: []string{}: for 'in', 'notin' operators, values set can't be empty"
        );
        let e = LabelSelector::from_json(&json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x", "y"]}]}))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "values: Invalid value: []string{\"x\", \"y\"}: values set must be empty for exists and does not exist"
        );
        let e = LabelSelector::from_json(&json!({"matchLabels": {"a b": "c"}})).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("key: Invalid value: \"a b\": name part must consist"),
            "{e}"
        );
        assert!(LabelSelector::from_json(&json!({"matchLabels": {"a": 1}})).is_err());
        assert!(LabelSelector::from_json(&json!({"matchLabels": [1]})).is_err());
        assert!(LabelSelector::from_json(&json!({"matchExpressions": {}})).is_err());
        assert!(
            LabelSelector::from_json(
                &json!({"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]})
            )
            .is_err()
        );
        assert!(LabelSelector::from_json(&json!("app=web")).is_err());
    }

    #[test]
    fn field_selectors_parse_and_print() {
        let sel =
            FieldSelector::parse("status.phase!=Running,metadata.name==a,spec.nodeName=").unwrap();
        assert_eq!(
            sel.to_string(),
            "metadata.name=a,spec.nodeName=,status.phase!=Running"
        );
        assert_eq!(sel.terms().len(), 3);
        assert!(FieldSelector::parse("").unwrap().is_empty());
        assert!(FieldSelector::parse(",").unwrap().is_empty());
        let sel = FieldSelector::parse(r"metadata.name=a\,b\=c\\d").unwrap();
        assert_eq!(sel.terms()[0].value, r"a,b=c\d");
        assert_eq!(sel.to_string(), r"metadata.name=a\,b\=c\\d");
        assert_eq!(
            FieldSelector::parse("metadata.name")
                .unwrap_err()
                .to_string(),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        assert_eq!(
            FieldSelector::parse(r"a=b\x").unwrap_err().to_string(),
            r"invalid field selector: invalid escape sequence: \x"
        );
        assert_eq!(
            FieldSelector::parse(r"a=b\").unwrap_err().to_string(),
            r"invalid field selector: invalid escape sequence: \"
        );
        assert_eq!(
            FieldSelector::parse("a=b=c").unwrap_err().to_string(),
            "invalid field selector: unescaped character in value: 61"
        );
        // No trimming, as upstream.
        assert_eq!(
            FieldSelector::parse("a = b").unwrap().terms()[0].field,
            "a "
        );
        assert_eq!(
            FieldSelector::parse("a!==b").unwrap_err().to_string(),
            "invalid field selector: unescaped character in value: 61"
        );
    }

    #[test]
    fn helpers() {
        let sel = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed").unwrap();
        assert_eq!(sel.requires_exact_match("spec.nodeName"), Some("n1"));
        assert_eq!(sel.requires_exact_match("status.phase"), None);
        assert_eq!(sel.requires_exact_match("metadata.name"), None);
        let pod = json!({"metadata": {"labels": {"app": "web"}}});
        assert!(parse("app=web").matches_object(&pod));
        assert!(!parse("app=web").matches_object(&json!({})));
        assert!(parse("!app").matches_object(&json!({"metadata": {}})));
    }

    #[test]
    fn field_selectors_match() {
        let sel = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed").unwrap();
        let get = |values: &'static [(&'static str, &'static str)]| {
            move |f: &str| {
                values
                    .iter()
                    .find(|(k, _)| *k == f)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(sel.matches(get(&[("spec.nodeName", "n1"), ("status.phase", "Running")])));
        assert!(sel.matches(get(&[("spec.nodeName", "n1")])));
        assert!(!sel.matches(get(&[("spec.nodeName", "n2")])));
        assert!(!sel.matches(get(&[("spec.nodeName", "n1"), ("status.phase", "Failed")])));
        let unscheduled = FieldSelector::parse("spec.nodeName=").unwrap();
        assert!(unscheduled.matches(get(&[])));
        assert!(!unscheduled.matches(get(&[("spec.nodeName", "n1")])));
    }

    #[test]
    fn pod_fields() {
        let pod = json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"nodeName": "n1", "restartPolicy": "Always", "schedulerName": "fargate-scheduler",
                     "serviceAccountName": "default"},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}],
                       "nominatedNodeName": "n2"}
        });
        let f = |field: &str| field_value("", "Pod", &pod, field).unwrap();
        assert_eq!(f("metadata.name").as_deref(), Some("p"));
        assert_eq!(f("metadata.namespace").as_deref(), Some("ns"));
        assert_eq!(f("spec.nodeName").as_deref(), Some("n1"));
        assert_eq!(f("spec.host").as_deref(), Some("n1"));
        assert_eq!(f("spec.restartPolicy").as_deref(), Some("Always"));
        assert_eq!(
            f("spec.schedulerName").as_deref(),
            Some("fargate-scheduler")
        );
        assert_eq!(f("spec.serviceAccountName").as_deref(), Some("default"));
        assert_eq!(f("spec.hostNetwork").as_deref(), Some("false"));
        assert_eq!(f("status.phase").as_deref(), Some("Running"));
        assert_eq!(f("status.podIP").as_deref(), Some("10.0.0.1"));
        assert_eq!(f("status.podIPs"), None);
        assert_eq!(f("status.nominatedNodeName").as_deref(), Some("n2"));
        assert_eq!(
            field_value("", "Pod", &pod, "spec.containers")
                .unwrap_err()
                .to_string(),
            "field label not supported: spec.containers"
        );
        let sel =
            FieldSelector::parse("spec.nodeName=n1,status.phase=Running,spec.hostNetwork=false")
                .unwrap();
        assert!(sel.matches_object("", "Pod", &pod).unwrap());
        let sel = FieldSelector::parse("spec.nodeName!=n1").unwrap();
        assert!(!sel.matches_object("", "Pod", &pod).unwrap());
        assert!(
            FieldSelector::parse("metadata.labels=x")
                .unwrap()
                .matches_object("", "Pod", &pod)
                .is_err()
        );
        assert!(
            FieldSelector::parse("spec.nodeName=")
                .unwrap()
                .check_supported("", "Pod")
                .is_ok()
        );
        assert!(
            FieldSelector::parse("spec.bogus=")
                .unwrap()
                .check_supported("", "Pod")
                .is_err()
        );
        let host = json!({"spec": {"hostNetwork": true}});
        assert_eq!(
            field_value("", "Pod", &host, "spec.hostNetwork")
                .unwrap()
                .as_deref(),
            Some("true")
        );
        assert_eq!(
            field_value("", "Pod", &host, "spec.nodeName").unwrap(),
            None
        );
    }

    #[test]
    fn event_fields() {
        let ev = json!({
            "metadata": {"name": "e", "namespace": "ns"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "ns", "uid": "u1", "apiVersion": "v1",
                               "resourceVersion": "7", "fieldPath": "spec.containers{c}"},
            "reason": "Scheduled", "type": "Normal", "source": {"component": "fargate-scheduler"},
            "reportingComponent": "fargate-scheduler"
        });
        let f = |field: &str| field_value("", "Event", &ev, field).unwrap();
        assert_eq!(f("involvedObject.kind").as_deref(), Some("Pod"));
        assert_eq!(f("involvedObject.name").as_deref(), Some("p"));
        assert_eq!(f("involvedObject.namespace").as_deref(), Some("ns"));
        assert_eq!(f("involvedObject.uid").as_deref(), Some("u1"));
        assert_eq!(f("involvedObject.apiVersion").as_deref(), Some("v1"));
        assert_eq!(f("involvedObject.resourceVersion").as_deref(), Some("7"));
        assert_eq!(
            f("involvedObject.fieldPath").as_deref(),
            Some("spec.containers{c}")
        );
        assert_eq!(f("reason").as_deref(), Some("Scheduled"));
        assert_eq!(f("type").as_deref(), Some("Normal"));
        assert_eq!(f("source").as_deref(), Some("fargate-scheduler"));
        assert_eq!(
            f("reportingComponent").as_deref(),
            Some("fargate-scheduler")
        );
        // source falls back to the reporting controller.
        let ev2 = json!({"reportingComponent": "kubelet"});
        assert_eq!(
            field_value("", "Event", &ev2, "source").unwrap().as_deref(),
            Some("kubelet")
        );
        assert!(field_value("", "Event", &ev, "message").is_err());
        // kubectl describe's selector.
        let sel = FieldSelector::parse("involvedObject.name=p,involvedObject.namespace=ns,involvedObject.kind=Pod,involvedObject.uid=u1").unwrap();
        assert!(sel.matches_object("", "Event", &ev).unwrap());

        let ev = json!({"metadata": {"name": "e"}, "regarding": {"kind": "Node", "name": "n"}, "reason": "R",
                        "type": "Warning", "reportingController": "c"});
        let f = |field: &str| field_value("events.k8s.io", "Event", &ev, field).unwrap();
        assert_eq!(f("regarding.kind").as_deref(), Some("Node"));
        assert_eq!(f("regarding.name").as_deref(), Some("n"));
        assert_eq!(f("regarding.uid"), None);
        assert_eq!(f("reportingController").as_deref(), Some("c"));
        assert_eq!(f("type").as_deref(), Some("Warning"));
        assert_eq!(f("reason").as_deref(), Some("R"));
        assert!(field_value("events.k8s.io", "Event", &ev, "involvedObject.kind").is_err());
        assert!(field_value("events.k8s.io", "Event", &ev, "source").is_err());
    }

    #[test]
    fn other_kinds_fields() {
        let node = json!({"metadata": {"name": "n"}, "spec": {"unschedulable": true}});
        assert_eq!(
            field_value("", "Node", &node, "spec.unschedulable")
                .unwrap()
                .as_deref(),
            Some("true")
        );
        assert_eq!(
            field_value("", "Node", &json!({}), "spec.unschedulable")
                .unwrap()
                .as_deref(),
            Some("false")
        );
        assert_eq!(
            field_value("", "Node", &node, "metadata.namespace")
                .unwrap_err()
                .to_string(),
            "field label not supported: metadata.namespace"
        );
        let ns = json!({"metadata": {"name": "default"}, "status": {"phase": "Active"}});
        assert_eq!(
            field_value("", "Namespace", &ns, "status.phase")
                .unwrap()
                .as_deref(),
            Some("Active")
        );
        assert!(field_value("", "Namespace", &ns, "metadata.namespace").is_err());
        let secret = json!({"type": "kubernetes.io/service-account-token"});
        assert_eq!(
            field_value("", "Secret", &secret, "type")
                .unwrap()
                .as_deref(),
            Some("kubernetes.io/service-account-token")
        );
        let rs = json!({"status": {"replicas": 3}});
        assert_eq!(
            field_value("apps", "ReplicaSet", &rs, "status.replicas")
                .unwrap()
                .as_deref(),
            Some("3")
        );
        assert_eq!(
            field_value("apps", "ReplicaSet", &json!({}), "status.replicas")
                .unwrap()
                .as_deref(),
            Some("0")
        );
        let job = json!({"status": {"succeeded": 1}});
        assert_eq!(
            field_value("batch", "Job", &job, "status.successful")
                .unwrap()
                .as_deref(),
            Some("1")
        );
        for (group, kind) in [
            ("", "ConfigMap"),
            ("apps", "Deployment"),
            ("coordination.k8s.io", "Lease"),
            ("", "ServiceAccount"),
            ("", "Endpoints"),
        ] {
            let obj = json!({"metadata": {"name": "x", "namespace": "y"}});
            assert_eq!(
                field_value(group, kind, &obj, "metadata.name")
                    .unwrap()
                    .as_deref(),
                Some("x")
            );
            assert_eq!(
                field_value(group, kind, &obj, "metadata.namespace")
                    .unwrap()
                    .as_deref(),
                Some("y")
            );
            assert_eq!(
                field_value(group, kind, &obj, "data.x")
                    .unwrap_err()
                    .to_string(),
                "\"data.x\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
            );
        }
        let svc = json!({"spec": {"clusterIP": "None", "type": "ClusterIP"}});
        assert!(
            FieldSelector::parse("spec.clusterIP!=None")
                .unwrap()
                .matches_object("", "Service", &svc)
                .is_ok_and(|m| !m)
        );
    }

    /// Every function must be total: odd inputs must not panic.
    #[test]
    fn odd_inputs_do_not_panic() {
        let inputs = [
            "",
            "!",
            "!!",
            "(",
            ")",
            ",",
            "=",
            "==",
            "!=",
            "<",
            ">",
            "a in",
            "a in (",
            "a in (,",
            "a in (,,",
            "a in (,)",
            "a notin ((",
            "in",
            "notin",
            "in in",
            "a=\0b",
            "\0",
            "é=ü",
            "a=é",
            "日本=語",
            "a!===b",
            "a<>b",
            "a in (b)(c)",
            "a,,b",
            "!a,!b,",
            "a=b,c in (d,e),f notin (g),!h,i",
            "a\\=b",
            "a in (b,c",
            "a<",
            "a>",
            "x>99999999999999999999",
        ];
        for s in inputs {
            let _ = LabelSelector::parse(s).map(|sel| sel.to_string());
            let _ = FieldSelector::parse(s).map(|sel| sel.to_string());
        }
        let long = "a=b,".repeat(10_000);
        assert!(LabelSelector::parse(&long).is_err());
        let long = "a in (".to_string() + &"x,".repeat(10_000) + "y)";
        assert_eq!(
            LabelSelector::parse(&long).unwrap().requirements()[0]
                .values
                .len(),
            2
        );
        for v in [
            json!(null),
            json!(1),
            json!([]),
            json!({"matchExpressions": [null, 1, {}]}),
        ] {
            let _ = LabelSelector::from_json(&v);
        }
        for kind in [
            "Pod",
            "Event",
            "Node",
            "Namespace",
            "Secret",
            "Service",
            "X",
        ] {
            let _ = field_value("", kind, &json!([1, 2]), "metadata.name");
            let _ = field_value("", kind, &json!("s"), "spec.nodeName");
        }
    }

    #[test]
    fn random_selectors_do_not_panic() {
        let alphabet: Vec<char> = "ab=!(),<> \t\\in notin.-_/0é".chars().collect();
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut parsed = 0;
        for _ in 0..20_000 {
            let mut s = String::new();
            for _ in 0..(state % 24) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            if let Ok(sel) = LabelSelector::parse(&s) {
                parsed += 1;
                // What prints parses back to the same selector.
                let printed = sel.to_string();
                let again = LabelSelector::parse(&printed).unwrap();
                assert_eq!(again.to_string(), printed, "{s:?}");
                let _ = sel.matches(&labels(&[("a", "b"), ("b", "1")]));
            }
            if let Ok(sel) = FieldSelector::parse(&s) {
                let printed = sel.to_string();
                assert_eq!(FieldSelector::parse(&printed).unwrap(), sel, "{s:?}");
                let _ = sel.matches_object("", "Pod", &json!({}));
            }
        }
        assert!(parsed > 100, "{parsed}");
    }

    #[test]
    fn large_selectors_are_fast() {
        let values: Vec<String> = (0..100_000).map(|i| format!("-v{i}")).collect();
        let s = format!("a in ({})", values.join(","));
        let e = LabelSelector::parse(&s).unwrap_err();
        assert!(e.to_string().len() > 100_000);
        let values: Vec<String> = (0..100_000).map(|i| format!("v{i}")).collect();
        let s = format!("a in ({})", values.join(","));
        assert_eq!(
            LabelSelector::parse(&s).unwrap().requirements()[0]
                .values
                .len(),
            100_000
        );
    }
}
