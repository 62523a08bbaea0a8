//! The rule expression language: a small, PromQL-shaped subset, parsed by
//! hand (recursive descent) so errors can point at a column.
//!
//! ```text
//! expr     := term (('+' | '-') term)*
//! term     := factor (('*' | '/') factor)*
//! factor   := NUMBER | '(' expr ')' | call | agg | selector
//! selector := IDENT ('{' matcher (',' matcher)* '}')?
//! matcher  := IDENT ('=' | '!=' | '=~' | '!~') STRING
//! call     := RANGE_FN '(' selector '[' DURATION ']' ')'
//!           | 'histogram_quantile' '(' NUMBER ',' expr ')'
//! agg      := AGG_OP by? '(' expr ')' by?      by := 'by' '(' labels ')'
//! RANGE_FN := rate | increase | delta | avg_over_time | max_over_time | min_over_time
//! AGG_OP   := sum | max | min | avg | count
//! ```

use std::{fmt, time::Duration};

use regex_lite::Regex;

use crate::duration::parse_duration;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("at column {col}: {msg}")]
pub struct ParseError {
    /// 1-based column in the expression text.
    pub col: usize,
    pub msg: String,
}

#[derive(Debug, Clone)]
pub enum Expr {
    Number(f64),
    /// The latest value of every matching series.
    Instant(Selector),
    Range {
        func: RangeFn,
        sel: Selector,
        range: Duration,
    },
    Quantile {
        q: f64,
        inner: Box<Expr>,
    },
    Agg {
        op: AggOp,
        by: Vec<String>,
        inner: Box<Expr>,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeFn {
    Rate,
    Increase,
    Delta,
    AvgOverTime,
    MaxOverTime,
    MinOverTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggOp {
    Sum,
    Max,
    Min,
    Avg,
    Count,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone)]
pub struct Selector {
    pub name: String,
    /// Column of the name, for "unknown metric" errors.
    pub col: usize,
    pub matchers: Vec<Matcher>,
}

#[derive(Debug, Clone)]
pub struct Matcher {
    pub label: String,
    pub op: MatchOp,
    pub value: String,
    /// Compiled, anchored (`^(?:re)$`) as in PromQL, for `=~` and `!~`.
    pub re: Option<Regex>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Eq,
    Ne,
    Re,
    NotRe,
}

impl Matcher {
    pub fn matches(&self, v: &str) -> bool {
        match self.op {
            MatchOp::Eq => v == self.value,
            MatchOp::Ne => v != self.value,
            MatchOp::Re => self.re.as_ref().is_some_and(|r| r.is_match(v)),
            MatchOp::NotRe => !self.re.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }
}

impl Expr {
    /// Every selector in the expression, in order.
    pub fn selectors(&self) -> Vec<&Selector> {
        let mut out = Vec::new();
        self.walk(&mut out);
        out
    }

    fn walk<'a>(&'a self, out: &mut Vec<&'a Selector>) {
        match self {
            Expr::Number(_) => {}
            Expr::Instant(s) | Expr::Range { sel: s, .. } => out.push(s),
            Expr::Quantile { inner, .. } | Expr::Agg { inner, .. } => inner.walk(out),
            Expr::Binary { lhs, rhs, .. } => {
                lhs.walk(out);
                rhs.walk(out);
            }
        }
    }

    /// Longest range window used, which is how much history to keep.
    pub fn max_range(&self) -> Duration {
        match self {
            Expr::Number(_) | Expr::Instant(_) => Duration::ZERO,
            Expr::Range { range, .. } => *range,
            Expr::Quantile { inner, .. } | Expr::Agg { inner, .. } => inner.max_range(),
            Expr::Binary { lhs, rhs, .. } => lhs.max_range().max(rhs.max_range()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num(f64),
    Str(String),
    /// `[5m]`, already parsed.
    Range(Duration),
    Punct(&'static str),
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Num(n) => write!(f, "number {n}"),
            Tok::Str(s) => write!(f, "string {s:?}"),
            Tok::Range(d) => write!(f, "range [{}]", crate::duration::format_duration(*d)),
            Tok::Punct(p) => write!(f, "`{p}`"),
            Tok::End => f.write_str("end of expression"),
        }
    }
}

fn err<T>(col: usize, msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        col,
        msg: msg.into(),
    })
}

/// Splits `src` into (token, 1-based column) pairs.
fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        let col = i + 1;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            out.push((Tok::Ident(src[start..i].to_owned()), col));
            continue;
        }
        if c.is_ascii_digit() || c == b'.' {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_digit()
                    || b[i] == b'.'
                    || b[i] == b'e'
                    || b[i] == b'E'
                    || ((b[i] == b'-' || b[i] == b'+') && matches!(b[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
            let text = &src[start..i];
            let n: f64 = text.parse().map_err(|_| ParseError {
                col,
                msg: format!("bad number {text:?}"),
            })?;
            out.push((Tok::Num(n), col));
            continue;
        }
        if c == b'"' || c == b'\'' {
            let quote = c;
            i += 1;
            let mut s = String::new();
            loop {
                let Some(&ch) = b.get(i) else {
                    return err(col, "unterminated string");
                };
                if ch == quote {
                    i += 1;
                    break;
                }
                if ch == b'\\' {
                    match b.get(i + 1) {
                        Some(b'\\') => s.push('\\'),
                        Some(b'"') => s.push('"'),
                        Some(b'\'') => s.push('\''),
                        Some(b'n') => s.push('\n'),
                        // Keep regex escapes such as `\.` as written; the
                        // escaped character may be more than one byte.
                        Some(_) => {
                            let o = src[i + 1..].chars().next().expect("in bounds");
                            s.push('\\');
                            s.push(o);
                            i += o.len_utf8() - 1;
                        }
                        None => return err(col, "unterminated string"),
                    }
                    i += 2;
                    continue;
                }
                // Copy a whole UTF-8 character.
                let ch = src[i..].chars().next().expect("in bounds");
                s.push(ch);
                i += ch.len_utf8();
            }
            out.push((Tok::Str(s), col));
            continue;
        }
        if c == b'[' {
            let Some(end) = src[i..].find(']') else {
                return err(col, "`[` without `]`");
            };
            let inner = &src[i + 1..i + end];
            let d = parse_duration(inner).map_err(|m| ParseError {
                col: col + 1,
                msg: m,
            })?;
            if d.is_zero() {
                return err(col + 1, "range must be longer than 0");
            }
            out.push((Tok::Range(d), col));
            i += end + 1;
            continue;
        }
        let two = src.get(i..i + 2).unwrap_or("");
        let p: &'static str = match two {
            "!=" => "!=",
            "=~" => "=~",
            "!~" => "!~",
            _ => match c {
                b'{' => "{",
                b'}' => "}",
                b'(' => "(",
                b')' => ")",
                b',' => ",",
                b'=' => "=",
                b'+' => "+",
                b'-' => "-",
                b'*' => "*",
                b'/' => "/",
                b'>' | b'<' => {
                    return err(
                        col,
                        "comparisons go in the rule's `op` and `threshold` fields, not in `expr`",
                    );
                }
                _ => {
                    return err(
                        col,
                        format!("unexpected character {:?}", src[i..].chars().next()),
                    );
                }
            },
        };
        i += p.len();
        out.push((Tok::Punct(p), col));
    }
    out.push((Tok::End, b.len() + 1));
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
    };
    let e = p.expr()?;
    let (t, col) = p.peek();
    if *t != Tok::End {
        return err(col, format!("unexpected {t} after a complete expression"));
    }
    Ok(e)
}

impl Parser {
    fn peek(&self) -> (&Tok, usize) {
        let (t, c) = &self.toks[self.pos];
        (t, *c)
    }

    fn next(&mut self) -> (Tok, usize) {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn expect(&mut self, p: &'static str) -> Result<usize, ParseError> {
        match self.next() {
            (Tok::Punct(q), col) if q == p => Ok(col),
            (t, col) => err(col, format!("expected `{p}`, found {t}")),
        }
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        let mut lhs = self.term()?;
        loop {
            let op = match self.peek().0 {
                Tok::Punct("+") => BinOp::Add,
                Tok::Punct("-") => BinOp::Sub,
                _ => return Ok(lhs),
            };
            self.next();
            let rhs = self.term()?;
            lhs = Expr::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
            };
        }
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        let mut lhs = self.factor()?;
        loop {
            let op = match self.peek().0 {
                Tok::Punct("*") => BinOp::Mul,
                Tok::Punct("/") => BinOp::Div,
                _ => return Ok(lhs),
            };
            self.next();
            let rhs = self.factor()?;
            lhs = Expr::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
            };
        }
    }

    fn factor(&mut self) -> Result<Expr, ParseError> {
        match self.next() {
            (Tok::Num(n), _) => Ok(Expr::Number(n)),
            (Tok::Punct("-"), _) => match self.next() {
                (Tok::Num(n), _) => Ok(Expr::Number(-n)),
                (t, col) => err(col, format!("expected a number after `-`, found {t}")),
            },
            (Tok::Punct("("), _) => {
                let e = self.expr()?;
                self.expect(")")?;
                Ok(e)
            }
            (Tok::Ident(name), col) => self.ident(name, col),
            (t, col) => err(
                col,
                format!("expected a metric, function or number, found {t}"),
            ),
        }
    }

    fn ident(&mut self, name: String, col: usize) -> Result<Expr, ParseError> {
        let range_fn = match name.as_str() {
            "rate" => Some(RangeFn::Rate),
            "increase" => Some(RangeFn::Increase),
            "delta" => Some(RangeFn::Delta),
            "avg_over_time" => Some(RangeFn::AvgOverTime),
            "max_over_time" => Some(RangeFn::MaxOverTime),
            "min_over_time" => Some(RangeFn::MinOverTime),
            _ => None,
        };
        if let Some(func) = range_fn {
            self.expect("(")?;
            let (t, scol) = self.next();
            let Tok::Ident(sname) = t else {
                return err(scol, format!("{name}() takes a metric selector, found {t}"));
            };
            let sel = self.selector(sname, scol)?;
            let range = match self.next() {
                (Tok::Range(d), _) => d,
                (t, c) => {
                    return err(
                        c,
                        format!("{name}() needs a range after the selector, e.g. [5m]; found {t}"),
                    );
                }
            };
            self.expect(")")?;
            return Ok(Expr::Range { func, sel, range });
        }
        let agg = match name.as_str() {
            "sum" => Some(AggOp::Sum),
            "max" => Some(AggOp::Max),
            "min" => Some(AggOp::Min),
            "avg" => Some(AggOp::Avg),
            "count" => Some(AggOp::Count),
            _ => None,
        };
        if let Some(op) = agg {
            let mut by = self.by_clause()?;
            self.expect("(")?;
            let inner = self.expr()?;
            self.expect(")")?;
            // PromQL also allows the clause after the body: `sum(x) by (l)`.
            if by.is_none() {
                by = self.by_clause()?;
            }
            let by = by.unwrap_or_default();
            return Ok(Expr::Agg {
                op,
                by,
                inner: Box::new(inner),
            });
        }
        if name == "histogram_quantile" {
            self.expect("(")?;
            let q = match self.next() {
                (Tok::Num(q), _) if (0.0..=1.0).contains(&q) => q,
                (t, c) => {
                    return err(
                        c,
                        format!("histogram_quantile needs a quantile in 0..1 first, found {t}"),
                    );
                }
            };
            self.expect(",")?;
            let inner = self.expr()?;
            self.expect(")")?;
            return Ok(Expr::Quantile {
                q,
                inner: Box::new(inner),
            });
        }
        if matches!(self.peek().0, Tok::Punct("(")) {
            return err(
                col,
                format!(
                    "unknown function `{name}` (known: rate, increase, delta, avg_over_time, \
                     max_over_time, min_over_time, histogram_quantile, sum, max, min, avg, count)"
                ),
            );
        }
        let sel = self.selector(name, col)?;
        if let (Tok::Range(_), c) = self.peek() {
            return err(
                c,
                "a range selector must be inside a function such as rate()",
            );
        }
        Ok(Expr::Instant(sel))
    }

    /// `by (a, b)` if present.
    fn by_clause(&mut self) -> Result<Option<Vec<String>>, ParseError> {
        if !matches!(self.peek().0, Tok::Ident(k) if k == "by") {
            return Ok(None);
        }
        self.next();
        self.expect("(")?;
        let mut by = Vec::new();
        loop {
            match self.next() {
                (Tok::Ident(l), _) => by.push(l),
                (Tok::Punct(")"), _) if by.is_empty() => break,
                (t, c) => return err(c, format!("expected a label name, found {t}")),
            }
            match self.next() {
                (Tok::Punct(","), _) => {}
                (Tok::Punct(")"), _) => break,
                (t, c) => return err(c, format!("expected `,` or `)`, found {t}")),
            }
        }
        Ok(Some(by))
    }

    fn selector(&mut self, name: String, col: usize) -> Result<Selector, ParseError> {
        let mut matchers = Vec::new();
        if matches!(self.peek().0, Tok::Punct("{")) {
            self.next();
            loop {
                let label = match self.next() {
                    (Tok::Ident(l), _) => l,
                    (Tok::Punct("}"), _) => break,
                    (t, c) => return err(c, format!("expected a label name, found {t}")),
                };
                let op = match self.next() {
                    (Tok::Punct("="), _) => MatchOp::Eq,
                    (Tok::Punct("!="), _) => MatchOp::Ne,
                    (Tok::Punct("=~"), _) => MatchOp::Re,
                    (Tok::Punct("!~"), _) => MatchOp::NotRe,
                    (t, c) => {
                        return err(
                            c,
                            format!("expected =, !=, =~ or !~ after `{label}`, found {t}"),
                        );
                    }
                };
                let (value, vcol) = match self.next() {
                    (Tok::Str(s), c) => (s, c),
                    (t, c) => return err(c, format!("expected a quoted value, found {t}")),
                };
                let re = match op {
                    MatchOp::Re | MatchOp::NotRe => Some(
                        Regex::new(&format!("^(?:{value})$")).map_err(|e| ParseError {
                            col: vcol,
                            msg: format!("bad regex {value:?}: {e}"),
                        })?,
                    ),
                    _ => None,
                };
                matchers.push(Matcher {
                    label,
                    op,
                    value,
                    re,
                });
                match self.next() {
                    (Tok::Punct(","), _) => {}
                    (Tok::Punct("}"), _) => break,
                    (t, c) => return err(c, format!("expected `,` or `}}`, found {t}")),
                }
            }
        }
        Ok(Selector {
            name,
            col,
            matchers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ratio_of_rates_with_grouping() {
        let e = parse(
            r#"sum by (service_name) (rate(http_server_request_duration_seconds_count{http_response_status_code=~"5.."}[5m]))
               / sum by (service_name) (rate(http_server_request_duration_seconds_count[5m]))"#,
        )
        .unwrap();
        let Expr::Binary {
            op: BinOp::Div,
            lhs,
            ..
        } = &e
        else {
            panic!("{e:?}")
        };
        let Expr::Agg {
            op: AggOp::Sum, by, ..
        } = lhs.as_ref()
        else {
            panic!("{lhs:?}")
        };
        assert_eq!(by, &["service_name"]);
        assert_eq!(e.selectors().len(), 2);
        assert_eq!(e.max_range(), Duration::from_secs(300));
        let m = &e.selectors()[0].matchers[0];
        assert!(m.matches("503") && !m.matches("404") && !m.matches("5000"));
    }

    #[test]
    fn parses_quantile_and_precedence() {
        let e = parse("histogram_quantile(0.99, sum by (le) (rate(x_bucket[1m]))) * 1000").unwrap();
        assert!(matches!(e, Expr::Binary { op: BinOp::Mul, .. }));
        let e = parse("sum(rate(x[1m])) by (a, b) / 2").unwrap();
        let Expr::Binary { lhs, .. } = &e else {
            panic!()
        };
        let Expr::Agg { by, .. } = lhs.as_ref() else {
            panic!()
        };
        assert_eq!(by, &["a", "b"]);
        let e = parse("a + b * c").unwrap();
        let Expr::Binary {
            op: BinOp::Add,
            rhs,
            ..
        } = e
        else {
            panic!()
        };
        assert!(matches!(*rhs, Expr::Binary { op: BinOp::Mul, .. }));
    }

    #[test]
    fn errors_point_at_the_column() {
        let e = parse("rate(x[5m]").unwrap_err();
        assert!(e.msg.contains("expected `)`"), "{e}");
        let e = parse("rate(x)").unwrap_err();
        assert_eq!(e.col, 7, "{e}");
        assert!(e.msg.contains("needs a range"), "{e}");
        let e = parse("x{a=~\"(\"}").unwrap_err();
        assert!(e.msg.contains("bad regex"), "{e}");
        let e = parse("rate(x[5y])").unwrap_err();
        assert_eq!(e.col, 8, "{e}");
        let e = parse("frobnicate(x)").unwrap_err();
        assert!(e.msg.contains("unknown function"), "{e}");
        let e = parse("x > 1").unwrap_err();
        assert!(e.msg.contains("threshold"), "{e}");
        let e = parse("x y").unwrap_err();
        assert_eq!(e.col, 3, "{e}");
    }

    #[test]
    fn escaped_multibyte_character_in_a_string() {
        // Found by the alert_expr fuzz target: a backslash before a
        // two-byte character left the lexer inside that character.
        let Expr::Instant(sel) = parse("x{a=\"\\\u{423}b\"}").unwrap() else {
            panic!()
        };
        assert_eq!(sel.matchers[0].value, "\\\u{423}b");
        assert!(parse("x{a=\"\\\u{1F600}").is_err(), "unterminated");
    }
}
