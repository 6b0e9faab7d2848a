//! A small reader for protobuf text format, enough for Triton's `config.pbtxt`: fields with
//! scalar or message values, `#` comments, both repeated-field syntaxes (`input [ {…}, {…} ]`
//! and repeated `input {…}` blocks), `<…>` message delimiters and optional separators.

/// A parsed message: its fields in order (repeated fields appear once per value).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Message {
    /// `(field name, value)` pairs.
    pub fields: Vec<(String, Field)>,
}

/// A field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// A number, identifier (enum, bool) or unescaped string.
    Scalar(String),
    /// A nested message.
    Message(Message),
}

impl Message {
    /// The first scalar value of `name`.
    pub fn scalar(&self, name: &str) -> Option<&str> {
        self.fields.iter().find_map(|(n, v)| match v {
            Field::Scalar(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }

    /// Every message value of `name`, in order.
    pub fn messages<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Message> + 'a {
        self.fields.iter().filter_map(move |(n, v)| match v {
            Field::Message(m) if n == name => Some(m),
            _ => None,
        })
    }
}

/// Deepest nesting accepted (configs nest a few levels; this bounds the recursion).
const MAX_DEPTH: usize = 64;

/// Parses a whole document.
pub fn parse(text: &str) -> Result<Message, String> {
    let tokens = tokenize(text)?;
    let mut pos = 0;
    let message = message(&tokens, &mut pos, None, 0)?;
    Ok(message)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Punct(char),
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    let mut line = 1;
    while let Some((i, c)) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => {
                for (_, c) in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '{' | '}' | '[' | ']' | '<' | '>' | ':' | ',' | ';' => {
                tokens.push((line, Token::Punct(c)))
            }
            '"' | '\'' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("line {line}: unterminated string")),
                        Some((_, q)) if q == c => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => s.push('\n'),
                            Some((_, 't')) => s.push('\t'),
                            Some((_, other)) => s.push(other),
                            None => return Err(format!("line {line}: unterminated string")),
                        },
                        Some((_, '\n')) => return Err(format!("line {line}: newline in a string")),
                        Some((_, other)) => s.push(other),
                    }
                }
                // Adjacent string literals concatenate.
                if let Some((_, Token::Str(previous))) = tokens.last_mut() {
                    previous.push_str(&s);
                } else {
                    tokens.push((line, Token::Str(s)));
                }
            }
            c if c.is_alphanumeric() || matches!(c, '_' | '-' | '+' | '.') => {
                let mut end = i + c.len_utf8();
                while let Some(&(j, d)) = chars.peek() {
                    if d.is_alphanumeric() || matches!(d, '_' | '-' | '+' | '.') {
                        end = j + d.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push((line, Token::Word(text[i..end].to_owned())));
            }
            other => return Err(format!("line {line}: unexpected `{other}`")),
        }
    }
    Ok(tokens)
}

fn message(
    tokens: &[(usize, Token)],
    pos: &mut usize,
    close: Option<char>,
    depth: usize,
) -> Result<Message, String> {
    if depth > MAX_DEPTH {
        return Err("nested too deeply".into());
    }
    let mut message = Message::default();
    loop {
        let Some((line, token)) = tokens.get(*pos) else {
            return match close {
                None => Ok(message),
                Some(c) => Err(format!("missing `{c}` at the end")),
            };
        };
        let line = *line;
        *pos += 1;
        let name = match token {
            Token::Punct(c) if Some(*c) == close => return Ok(message),
            Token::Punct(',' | ';') => continue,
            Token::Word(name) => name.clone(),
            other => {
                return Err(format!(
                    "line {line}: expected a field name, found {other:?}"
                ))
            }
        };
        let colon = matches!(tokens.get(*pos), Some((_, Token::Punct(':'))));
        if colon {
            *pos += 1;
        }
        match tokens.get(*pos) {
            Some((_, Token::Punct('['))) => {
                *pos += 1;
                loop {
                    match tokens.get(*pos) {
                        Some((_, Token::Punct(']'))) => {
                            *pos += 1;
                            break;
                        }
                        Some((_, Token::Punct(','))) => *pos += 1,
                        Some(_) => {
                            let value = value(tokens, pos, depth)?;
                            message.fields.push((name.clone(), value));
                        }
                        None => return Err(format!("line {line}: missing `]`")),
                    }
                }
            }
            Some(_) => {
                let value = value(tokens, pos, depth)?;
                if !colon && matches!(value, Field::Scalar(_)) {
                    return Err(format!("line {line}: expected `:` after `{name}`"));
                }
                message.fields.push((name, value));
            }
            None => return Err(format!("line {line}: `{name}` has no value")),
        }
    }
}

fn value(tokens: &[(usize, Token)], pos: &mut usize, depth: usize) -> Result<Field, String> {
    let (line, token) = &tokens[*pos];
    *pos += 1;
    match token {
        Token::Punct('{') => Ok(Field::Message(message(tokens, pos, Some('}'), depth + 1)?)),
        Token::Punct('<') => Ok(Field::Message(message(tokens, pos, Some('>'), depth + 1)?)),
        Token::Word(w) => Ok(Field::Scalar(w.clone())),
        Token::Str(s) => Ok(Field::Scalar(s.clone())),
        Token::Punct(c) => Err(format!("line {line}: unexpected `{c}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_repeated_syntaxes_and_comments() {
        let list = r#"
            name: "ranker"   # the model
            platform: "onnxruntime_onnx"
            max_batch_size: 8
            input [
              { name: "user_id" data_type: TYPE_INT64 dims: [ 1 ] },
              { name: "item_ctr", data_type: TYPE_FP32, dims: [ -1, 4 ], optional: true }
            ]
            output [ { name: "score" data_type: TYPE_FP32 dims: [ 1 ] } ]
            instance_group [ { kind: KIND_CPU count: 2 } ]
        "#;
        let m = parse(list).unwrap();
        assert_eq!(m.scalar("name"), Some("ranker"));
        let names: Vec<_> = m
            .messages("input")
            .map(|i| i.scalar("name").unwrap())
            .collect();
        assert_eq!(names, ["user_id", "item_ctr"]);
        let blocks = "name: 'ranker'\ninput {\n name: \"a\" # first\n dims: 1\n}\ninput <\n name: \"b\"\n>\noutput { name: \"o\" }\n";
        let m = parse(blocks).unwrap();
        let names: Vec<_> = m
            .messages("input")
            .map(|i| i.scalar("name").unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn errors_name_the_line() {
        assert!(parse("input {\n name: \"a\"\n")
            .unwrap_err()
            .contains("missing `}`"));
        assert!(parse("name \"x\"").unwrap_err().contains("line 1"));
        assert!(parse(&"a {".repeat(100))
            .unwrap_err()
            .contains("nested too deeply"));
    }
}
