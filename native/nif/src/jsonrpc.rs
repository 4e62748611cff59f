//! JSON and JSON-RPC 2.0 messages between Erlang terms and the core's codec.
//!
//! JSON to Erlang: objects are maps with binary keys, arrays lists, strings
//! binaries, `true`/`false`/`null` atoms, integers that fit 64 bits
//! integers, other numbers floats (a number past a float's range is a parse
//! error). A request id that is a number is an integer when it is one that
//! fits, else `{json_number, Text}`, its text as it came: ids are echoed
//! exactly.
//!
//! Erlang to JSON: the same, and also atom keys and atoms (other than the
//! three) as strings, and `{json_number, Text}` (a float's value in a
//! result, the exact text in an id). Anything else (a pid, a tuple, a binary
//! that is not UTF-8, an integer past 64 bits, nesting past 512 levels) is
//! `{error, {unencodable, Why}}`, where `Why` is a readable binary.

use std::fmt;

use erlmcp_flow_core::FlowError;
use erlmcp_flow_core::rpc::codec::{
    self, Decoded, ErrorObject, Id, Item, Limits, Message, RawJson, Rejected,
};
use erlmcp_flow_core::rpc::serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use erlmcp_flow_core::rpc::serde::ser::{Error as _, SerializeMap, SerializeSeq};
use erlmcp_flow_core::rpc::serde::{Deserializer, Serialize, Serializer};
use erlmcp_flow_core::rpc::serde_json::{self, Value};
use rustler::types::tuple::{get_tuple, make_tuple};
use rustler::{Atom, Binary, Encoder, Env, MapIterator, Term, TermType};

use crate::atoms;
use crate::error::{NifError, NifOutcome, badarg, reply};
use crate::terms::binary_term;

/// Deepest Erlang term `json_encode` follows.
const MAX_ENCODE_DEPTH: usize = 512;

/// The most a codec call on a normal scheduler takes in: bytes of a message
/// to decode, units of encoding work (one a term visited, one a list cell,
/// one a byte of binaries and keys: about a byte of output). Past it the
/// normal variant answers `{error, {dirty_only, Bound}}` and the caller asks
/// the `_dirty` one: no input makes a normal-scheduler call long. (64 KiB of
/// small numbers decode to 32 000 terms in 1.2 ms and encode in 0.8 ms on
/// our machine; a quarter of that is well under a millisecond.)
pub const NORMAL_SCHEDULER_BYTES: usize = 16_384;

/// Bytes of answer a vote is signed or verified over on a normal scheduler
/// (SHA-256 of 64 KiB: about 40 µs).
pub const NORMAL_SIGN_BYTES: usize = 65_536;

thread_local! {
    /// Encoding work this thread's current call may still do.
    static BUDGET: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    /// Whether the current call ran out of it.
    static EXCEEDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Takes `units` of the current call's encoding work; false (and the call
/// marked) when there is not that much left.
fn charge(units: usize) -> bool {
    BUDGET.with(|b| match b.get().checked_sub(units) {
        Some(left) => {
            b.set(left);
            true
        }
        None => {
            EXCEEDED.with(|e| e.set(true));
            false
        }
    })
}

/// Runs an encoding with `budget` units of work: the text, or `None` when
/// the budget ran out (the normal variant's refusal).
fn within<T>(budget: usize, f: impl FnOnce() -> T) -> Option<T> {
    /// Gives the thread its unbounded budget back however the call ends.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(usize::MAX));
        }
    }
    BUDGET.with(|b| b.set(budget));
    EXCEEDED.with(|e| e.set(false));
    let _reset = Reset;
    let out = f();
    (!EXCEEDED.with(|e| e.replace(false))).then_some(out)
}

/// `{error, {dirty_only, Bound}}`.
pub fn dirty_only(env: Env<'_>, bound: usize) -> Term<'_> {
    (atoms::error(), (atoms::dirty_only(), bound)).encode(env)
}

/// Why a walk of a list stopped short.
const IMPROPER: &str = "an improper list";
const PAST_BUDGET: &str = "past the normal scheduler's budget";

/// The elements of a proper list, one at a time, each charged one unit of
/// work (no walk of the whole list first); `Err(err(IMPROPER))` for an
/// improper list, `Err(err(PAST_BUDGET))` when the budget runs out.
fn for_each_element<'a, E>(
    list: Term<'a>,
    mut f: impl FnMut(Term<'a>) -> Result<(), E>,
    err: impl Fn(&'static str) -> E,
) -> Result<(), E> {
    let mut rest = list;
    loop {
        if rest.is_empty_list() {
            return Ok(());
        }
        let (head, tail) = rest.list_get_cell().map_err(|_| err(IMPROPER))?;
        if !charge(1) {
            return Err(err(PAST_BUDGET));
        }
        f(head)?;
        rest = tail;
    }
}

/// JSON text straight into Erlang terms, without a tree of values between.
/// Arrays and objects gather their elements on one stack shared by the
/// whole parse (no allocation per container); object keys seen before are
/// reused rather than made again.
#[derive(Clone, Copy)]
struct TermSeed<'a, 's> {
    env: Env<'a>,
    scratch: &'s std::cell::RefCell<Scratch<'a>>,
}

struct Scratch<'a> {
    stack: Vec<Term<'a>>,
    /// Recent object keys and their binaries (objects of one shape repeat
    /// their keys).
    keys: Vec<(Box<str>, Term<'a>)>,
}

const KEY_CACHE: usize = 32;

impl<'de, 'a, 's> DeserializeSeed<'de> for TermSeed<'a, 's> {
    type Value = Term<'a>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Term<'a>, D::Error> {
        d.deserialize_any(self)
    }
}

/// An object key as a binary, from the cache when it was seen.
#[derive(Clone, Copy)]
struct KeySeed<'a, 's>(TermSeed<'a, 's>);

impl<'de, 'a, 's> DeserializeSeed<'de> for KeySeed<'a, 's> {
    type Value = Term<'a>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Term<'a>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'a, 's> Visitor<'de> for KeySeed<'a, 's> {
    type Value = Term<'a>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, k: &str) -> Result<Term<'a>, E> {
        let mut scratch = self.0.scratch.borrow_mut();
        if let Some((_, t)) = scratch.keys.iter().find(|(s, _)| &**s == k) {
            return Ok(*t);
        }
        let t = binary_term(self.0.env, k.as_bytes());
        if k.len() <= 64 {
            if scratch.keys.len() == KEY_CACHE {
                scratch.keys.remove(0);
            }
            scratch.keys.push((k.into(), t));
        }
        Ok(t)
    }
}

impl<'de, 'a, 's> Visitor<'de> for TermSeed<'a, 's> {
    type Value = Term<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Term<'a>, E> {
        Ok(b.encode(self.env))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Term<'a>, E> {
        Ok(i.encode(self.env))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Term<'a>, E> {
        Ok(u.encode(self.env))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Term<'a>, E> {
        Ok(f.encode(self.env))
    }
    fn visit_str<E>(self, s: &str) -> Result<Term<'a>, E> {
        Ok(binary_term(self.env, s.as_bytes()))
    }
    fn visit_unit<E>(self) -> Result<Term<'a>, E> {
        Ok(atoms::null().encode(self.env))
    }
    fn visit_none<E>(self) -> Result<Term<'a>, E> {
        Ok(atoms::null().encode(self.env))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Term<'a>, A::Error> {
        let base = self.scratch.borrow().stack.len();
        while let Some(t) = seq.next_element_seed(self)? {
            self.scratch.borrow_mut().stack.push(t);
        }
        let mut scratch = self.scratch.borrow_mut();
        let list = scratch.stack[base..].encode(self.env);
        scratch.stack.truncate(base);
        Ok(list)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Term<'a>, A::Error> {
        // keys and values interleaved on the stack
        let base = self.scratch.borrow().stack.len();
        while let Some((k, v)) = map.next_entry_seed(KeySeed(self), self)? {
            let mut scratch = self.scratch.borrow_mut();
            scratch.stack.push(k);
            scratch.stack.push(v);
        }
        let mut scratch = self.scratch.borrow_mut();
        let m = map_of_pairs(self.env, &scratch.stack[base..]);
        scratch.stack.truncate(base);
        Ok(m)
    }
}

/// A map from keys and values interleaved (`k1, v1, k2, v2, ...`); a key
/// given twice takes its last value, as serde_json does.
fn map_of_pairs<'a>(env: Env<'a>, pairs: &[Term<'a>]) -> Term<'a> {
    let keys: Vec<Term<'a>> = pairs.iter().step_by(2).copied().collect();
    let values: Vec<Term<'a>> = pairs.iter().skip(1).step_by(2).copied().collect();
    match Term::map_from_term_arrays(env, &keys, &values) {
        Ok(m) => m,
        Err(_) => keys
            .iter()
            .zip(&values)
            .fold(Term::map_new(env), |m, (k, v)| {
                m.map_put(*k, *v).unwrap_or(m)
            }),
    }
}

/// Valid JSON text as an Erlang term; `None` for a number past a float's
/// range (the raw scan lets it through, a value cannot hold it).
fn json_term<'a>(env: Env<'a>, text: &str) -> Option<Term<'a>> {
    // the depth was checked before the parse (`max_depth` is at most 128,
    // serde_json's own recursion limit)
    let mut de = serde_json::Deserializer::from_str(text);
    let scratch = std::cell::RefCell::new(Scratch {
        stack: Vec::new(),
        keys: Vec::new(),
    });
    TermSeed {
        env,
        scratch: &scratch,
    }
    .deserialize(&mut de)
    .ok()
}

fn value_term<'a>(env: Env<'a>, v: &Value) -> Term<'a> {
    json_term(env, &v.to_string()).unwrap_or_else(|| atoms::null().encode(env))
}

/// An id: a number is an integer when its text is one that fits (and reads
/// back the same), else `{json_number, Text}`.
fn id_term<'a>(env: Env<'a>, id: &Id) -> Term<'a> {
    match id {
        Id::Null => atoms::null().encode(env),
        Id::String(s) => binary_term(env, s.as_bytes()),
        Id::Number(text) => match (text.parse::<i64>(), text.parse::<u64>()) {
            (Ok(i), _) if i.to_string() == *text => i.encode(env),
            (_, Ok(u)) if u.to_string() == *text => u.encode(env),
            _ => (atoms::json_number(), binary_term(env, text.as_bytes())).encode(env),
        },
    }
}

fn opt_value_term<'a>(env: Env<'a>, v: &Option<Value>) -> Term<'a> {
    match v {
        None => atoms::undefined().encode(env),
        Some(v) => value_term(env, v),
    }
}

/// Params as a term, `undefined` when absent; `Err` when a number in them is
/// past a float's range.
fn raw_term<'a>(env: Env<'a>, v: &Option<RawJson>) -> Result<Term<'a>, ()> {
    match v {
        None => Ok(atoms::undefined().encode(env)),
        Some(raw) => json_term(env, raw.text()).ok_or(()),
    }
}

fn error_parts<'a>(env: Env<'a>, e: &ErrorObject) -> [Term<'a>; 3] {
    [
        e.code.encode(env),
        binary_term(env, e.message.as_bytes()),
        opt_value_term(env, &e.data),
    ]
}

fn item_term<'a>(env: Env<'a>, item: &Item) -> Term<'a> {
    // a number past a float's range in params or a result: that item is a
    // parse error, answered as any other
    let unreadable = |id: &Id| {
        let e = ErrorObject::new(codec::PARSE_ERROR, "Parse error");
        let [c, m, d] = error_parts(env, &e);
        make_tuple(
            env,
            &[atoms::invalid().encode(env), id_term(env, id), c, m, d],
        )
    };
    match item {
        Ok(Message::Request { id, method, params }) => match raw_term(env, params) {
            Ok(p) => make_tuple(
                env,
                &[
                    atoms::request().encode(env),
                    id_term(env, id),
                    binary_term(env, method.as_bytes()),
                    p,
                ],
            ),
            Err(()) => unreadable(id),
        },
        Ok(Message::Notification { method, params }) => match raw_term(env, params) {
            Ok(p) => make_tuple(
                env,
                &[
                    atoms::notification().encode(env),
                    binary_term(env, method.as_bytes()),
                    p,
                ],
            ),
            Err(()) => unreadable(&Id::Null),
        },
        Ok(Message::Response { id, outcome }) => {
            let outcome = match outcome {
                Ok(raw) => match json_term(env, raw.text()) {
                    Some(t) => (atoms::ok(), t).encode(env),
                    None => return unreadable(id),
                },
                Err(e) => {
                    let [c, m, d] = error_parts(env, e);
                    make_tuple(env, &[atoms::error().encode(env), c, m, d])
                }
            };
            make_tuple(
                env,
                &[atoms::response().encode(env), id_term(env, id), outcome],
            )
        }
        Err(Rejected { id, error }) => {
            let [c, m, d] = error_parts(env, error);
            make_tuple(
                env,
                &[atoms::invalid().encode(env), id_term(env, id), c, m, d],
            )
        }
    }
}

fn limits(max_bytes: Term<'_>, max_depth: Term<'_>, max_batch: Term<'_>) -> NifOutcome<Limits> {
    let positive = |t: Term<'_>, what| {
        t.decode::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .map(|n| n.min(usize::MAX as u64) as usize)
            .ok_or_else(|| badarg(what))
    };
    Ok(Limits {
        max_message_bytes: positive(max_bytes, "max_message_bytes")?,
        // serde_json's recursion limit
        max_depth: positive(max_depth, "max_depth")?.min(128),
        max_batch: positive(max_batch, "max_batch")?,
    })
}

fn decode_message<'a>(
    env: Env<'a>,
    bin: Term<'a>,
    max_bytes: Term<'a>,
    max_depth: Term<'a>,
    max_batch: Term<'a>,
) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let bin = Binary::from_term(bin).map_err(|_| badarg("message"))?;
        let limits = limits(max_bytes, max_depth, max_batch)?;
        Ok(match codec::decode(bin.as_slice(), &limits) {
            Decoded::Single(item) => (atoms::single(), item_term(env, &item)).encode(env),
            Decoded::Batch(items) => {
                let terms: Vec<Term<'a>> = items.iter().map(|i| item_term(env, i)).collect();
                (atoms::batch(), terms).encode(env)
            }
        })
    };
    reply(env, run())
}

/// `jsonrpc_decode(Message, MaxBytes, MaxDepth, MaxBatch) -> {single, Item} |
/// {batch, [Item]}`, an item being `{request, Id, Method, Params}`,
/// `{notification, Method, Params}`, `{response, Id, {ok, Result} | {error,
/// Code, Message, Data}}` or `{invalid, Id, Code, Message, Data}` (the error
/// response it gets); `Params` and `Data` are `undefined` when absent.
/// On a normal scheduler a message past [`NORMAL_SCHEDULER_BYTES`] is
/// `{error, {dirty_only, 16384}}`: the caller decodes it with
/// `jsonrpc_decode_dirty`.
#[rustler::nif]
fn jsonrpc_decode<'a>(
    env: Env<'a>,
    bin: Term<'a>,
    max_bytes: Term<'a>,
    max_depth: Term<'a>,
    max_batch: Term<'a>,
) -> Term<'a> {
    if Binary::from_term(bin).is_ok_and(|b| b.len() > NORMAL_SCHEDULER_BYTES) {
        return dirty_only(env, NORMAL_SCHEDULER_BYTES);
    }
    decode_message(env, bin, max_bytes, max_depth, max_batch)
}

/// `jsonrpc_decode/4` on a dirty scheduler, for large messages.
#[rustler::nif(name = "jsonrpc_decode_dirty", schedule = "DirtyCpu")]
fn jsonrpc_decode_dirty<'a>(
    env: Env<'a>,
    bin: Term<'a>,
    max_bytes: Term<'a>,
    max_depth: Term<'a>,
    max_batch: Term<'a>,
) -> Term<'a> {
    decode_message(env, bin, max_bytes, max_depth, max_batch)
}

/// Why a term has no JSON form.
struct Unencodable(String);

fn unencodable<T>(why: impl Into<String>) -> Result<T, Unencodable> {
    Err(Unencodable(why.into()))
}

/// The text of `{json_number, Text}`, if `t` is one (checked to be a JSON
/// number).
fn raw_number(t: Term<'_>) -> Option<Result<String, Unencodable>> {
    let parts = get_tuple(t).ok()?;
    if parts.len() != 2 || Atom::from_term(parts[0]).ok()? != atoms::json_number() {
        return None;
    }
    let text = Binary::from_term(parts[1]).ok()?;
    Some(match std::str::from_utf8(text.as_slice()) {
        Ok(s) if codec::is_json_number(s) => Ok(s.to_string()),
        _ => unencodable("{json_number, Text} whose Text is not a JSON number"),
    })
}

/// An Erlang term written as JSON (serde_json's writer walks it directly).
struct TermSer<'a> {
    term: Term<'a>,
    depth: usize,
}

impl<'a> TermSer<'a> {
    fn child(&self, term: Term<'a>) -> TermSer<'a> {
        TermSer {
            term,
            depth: self.depth + 1,
        }
    }
}

/// A map key as a string: a binary (UTF-8) or an atom.
fn key_str(t: Term<'_>) -> Result<String, &'static str> {
    if let Ok(b) = Binary::from_term(t) {
        return std::str::from_utf8(b.as_slice())
            .map(str::to_string)
            .map_err(|_| "a map key that is a binary but not UTF-8 text");
    }
    if t.is_atom() {
        return t.atom_to_string().map_err(|_| "an atom key");
    }
    Err("a map key that is neither a binary nor an atom")
}

impl Serialize for TermSer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.depth > MAX_ENCODE_DEPTH {
            return Err(S::Error::custom("a term nested more than 512 levels deep"));
        }
        if !charge(1) {
            return Err(S::Error::custom(PAST_BUDGET));
        }
        let t = self.term;
        match t.get_type() {
            TermType::Atom => {
                let a = Atom::from_term(t).map_err(|_| S::Error::custom("an atom"))?;
                if a == atoms::true_() {
                    s.serialize_bool(true)
                } else if a == atoms::false_() {
                    s.serialize_bool(false)
                } else if a == atoms::null() {
                    s.serialize_unit()
                } else {
                    let name = t
                        .atom_to_string()
                        .map_err(|_| S::Error::custom("an atom"))?;
                    s.serialize_str(&name)
                }
            }
            TermType::Binary => {
                let b = Binary::from_term(t).map_err(|_| S::Error::custom("a binary"))?;
                if !charge(b.len()) {
                    return Err(S::Error::custom(PAST_BUDGET));
                }
                let text = std::str::from_utf8(b.as_slice())
                    .map_err(|_| S::Error::custom("a binary that is not UTF-8 text"))?;
                s.serialize_str(text)
            }
            TermType::Integer => {
                if let Ok(i) = t.decode::<i64>() {
                    s.serialize_i64(i)
                } else if let Ok(u) = t.decode::<u64>() {
                    s.serialize_u64(u)
                } else {
                    Err(S::Error::custom("an integer past 64 bits"))
                }
            }
            TermType::Float => {
                let f: f64 = t.decode().map_err(|_| S::Error::custom("a float"))?;
                s.serialize_f64(f)
            }
            TermType::List => {
                let mut seq = s.serialize_seq(None)?;
                for_each_element(
                    t,
                    |x| seq.serialize_element(&self.child(x)),
                    S::Error::custom,
                )?;
                seq.end()
            }
            TermType::Map => {
                let iter = MapIterator::new(t).ok_or_else(|| S::Error::custom("a map"))?;
                let mut map = s.serialize_map(None)?;
                for (k, v) in iter {
                    let key = key_str(k).map_err(S::Error::custom)?;
                    if !charge(key.len()) {
                        return Err(S::Error::custom(PAST_BUDGET));
                    }
                    map.serialize_entry(&key, &self.child(v))?;
                }
                map.end()
            }
            TermType::Tuple => match raw_number(t) {
                Some(Ok(text)) => match text.parse::<f64>() {
                    Ok(f) if f.is_finite() => s.serialize_f64(f),
                    _ => Err(S::Error::custom("{json_number, Text} past a float's range")),
                },
                Some(Err(Unencodable(why))) => Err(S::Error::custom(why)),
                None => Err(S::Error::custom("a tuple")),
            },
            TermType::Pid => Err(S::Error::custom("a pid")),
            TermType::Ref => Err(S::Error::custom("a reference")),
            TermType::Fun => Err(S::Error::custom("a fun")),
            TermType::Port => Err(S::Error::custom("a port")),
            _ => Err(S::Error::custom("a term JSON cannot carry")),
        }
    }
}

/// The JSON text of a term.
fn term_json(t: Term<'_>) -> Result<String, Unencodable> {
    serde_json::to_string(&TermSer { term: t, depth: 0 }).map_err(|e| Unencodable(e.to_string()))
}

/// A term as a `Value` (error data).
fn term_value(t: Term<'_>) -> Result<Value, Unencodable> {
    serde_json::to_value(TermSer { term: t, depth: 0 }).map_err(|e| Unencodable(e.to_string()))
}

fn id_value(t: Term<'_>) -> Result<Id, Unencodable> {
    if let Some(text) = raw_number(t) {
        return text.map(Id::Number);
    }
    match term_value(t)? {
        Value::Null => Ok(Id::Null),
        Value::String(s) => Ok(Id::String(s)),
        Value::Number(n) => Ok(Id::Number(n.to_string())),
        _ => unencodable("an id that is not a string, a number or null"),
    }
}

fn method_string(t: Term<'_>) -> Result<String, Unencodable> {
    match term_value(t)? {
        Value::String(s) => Ok(s),
        _ => unencodable("a method that is not a binary or an atom"),
    }
}

/// Params as JSON text: `undefined` for none, else a map or a list.
fn params_json(t: Term<'_>) -> Result<Option<String>, Unencodable> {
    if Atom::from_term(t).is_ok_and(|a| a == atoms::undefined()) {
        return Ok(None);
    }
    if !matches!(t.get_type(), TermType::Map | TermType::List) {
        return unencodable("params that are neither a map nor a list");
    }
    term_json(t).map(Some)
}

fn error_object(
    code: Term<'_>,
    message: Term<'_>,
    data: Term<'_>,
) -> Result<ErrorObject, Unencodable> {
    let code: i64 = code
        .decode()
        .or_else(|_| unencodable("an error code that is not an integer"))?;
    let message = match term_value(message)? {
        Value::String(s) => s,
        _ => return unencodable("an error message that is not a binary or an atom"),
    };
    Ok(ErrorObject {
        code,
        message,
        data: params_value_any(data)?,
    })
}

/// `undefined` for none, else any JSON value.
fn params_value_any(t: Term<'_>) -> Result<Option<Value>, Unencodable> {
    if Atom::from_term(t).is_ok_and(|a| a == atoms::undefined()) {
        return Ok(None);
    }
    term_value(t).map(Some)
}

/// The JSON text of one message described as `decode` gives it (without
/// `invalid`).
fn message_json(t: Term<'_>, in_batch: bool) -> Result<String, Unencodable> {
    let parts = get_tuple(t).or_else(|_| unencodable("a message that is not a tuple"))?;
    let tag = parts
        .first()
        .and_then(|p| Atom::from_term(*p).ok())
        .ok_or_else(|| Unencodable("a message without its tag".into()))?;
    match (parts.len(), tag) {
        (4, a) if a == atoms::request() => Ok(codec::request_json(
            Some(&id_value(parts[1])?),
            &method_string(parts[2])?,
            params_json(parts[3])?.as_deref(),
        )),
        (3, a) if a == atoms::notification() => Ok(codec::request_json(
            None,
            &method_string(parts[1])?,
            params_json(parts[2])?.as_deref(),
        )),
        (3, a) if a == atoms::response() => {
            let id = id_value(parts[1])?;
            let outcome = get_tuple(parts[2]).or_else(|_| unencodable("a response outcome"))?;
            let tag = outcome.first().and_then(|p| Atom::from_term(*p).ok());
            match (outcome.len(), tag) {
                (2, Some(a)) if a == atoms::ok() => {
                    Ok(codec::response_json(&id, Ok(&term_json(outcome[1])?)))
                }
                (4, Some(a)) if a == atoms::error() => Ok(codec::response_json(
                    &id,
                    Err(&error_object(outcome[1], outcome[2], outcome[3])?),
                )),
                _ => unencodable(
                    "a response outcome other than {ok, R} or {error, Code, Message, Data}",
                ),
            }
        }
        (2, a) if a == atoms::batch() && !in_batch => {
            if !parts[1].is_list() {
                return unencodable("a batch that is not a list");
            }
            let mut items = Vec::new();
            for_each_element(
                parts[1],
                |m| {
                    items.push(message_json(m, true)?);
                    Ok(())
                },
                |why| {
                    Unencodable(
                        if why == IMPROPER {
                            "a batch that is not a list"
                        } else {
                            why
                        }
                        .into(),
                    )
                },
            )?;
            Ok(codec::batch_json(&items))
        }
        _ => unencodable("a message other than request, notification, response or batch"),
    }
}

fn encoded<'a>(env: Env<'a>, text: Result<String, Unencodable>) -> Term<'a> {
    match text {
        Ok(text) => (atoms::ok(), binary_term(env, text.as_bytes())).encode(env),
        Err(Unencodable(why)) => NifError::Unencodable(why).encode(env),
    }
}

/// An encoding on a normal scheduler: within the budget, or refused.
fn encoded_normal<'a>(env: Env<'a>, f: impl FnOnce() -> Result<String, Unencodable>) -> Term<'a> {
    match within(NORMAL_SCHEDULER_BYTES, f) {
        Some(text) => encoded(env, text),
        None => dirty_only(env, NORMAL_SCHEDULER_BYTES),
    }
}

/// `jsonrpc_encode(Message) -> {ok, Binary} | {error, {unencodable, Why}} |
/// {error, {dirty_only, 16384}}`: `{request, Id, Method, Params}`,
/// `{notification, Method, Params}`, `{response, Id, {ok, Result} | {error,
/// Code, Message, Data}}`, or `{batch, [Message]}`. On a normal scheduler it
/// does at most [`NORMAL_SCHEDULER_BYTES`] units of work (about as many
/// bytes of JSON): past them, `dirty_only`, and the caller encodes with
/// `jsonrpc_encode_dirty`.
#[rustler::nif]
fn jsonrpc_encode<'a>(env: Env<'a>, message: Term<'a>) -> Term<'a> {
    encoded_normal(env, || message_json(message, false))
}

/// `jsonrpc_encode/1` on a dirty scheduler, for large messages: no bound.
#[rustler::nif(schedule = "DirtyCpu")]
fn jsonrpc_encode_dirty<'a>(env: Env<'a>, message: Term<'a>) -> Term<'a> {
    encoded(env, message_json(message, false))
}

/// `json_encode(Term) -> {ok, Binary} | {error, {unencodable, Why}} |
/// {error, {dirty_only, 16384}}`, bounded as `jsonrpc_encode/1`; large terms
/// with `json_encode_dirty`.
#[rustler::nif]
fn json_encode<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    encoded_normal(env, || term_json(term))
}

/// `json_encode/1` on a dirty scheduler, for large terms: no bound.
#[rustler::nif(schedule = "DirtyCpu")]
fn json_encode_dirty<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    encoded(env, term_json(term))
}

/// `json_decode(Binary, MaxBytes, MaxDepth) -> {ok, Term} | {error,
/// too_large | too_deep | parse_error}`.
#[rustler::nif(schedule = "DirtyCpu")]
fn json_decode<'a>(
    env: Env<'a>,
    bin: Term<'a>,
    max_bytes: Term<'a>,
    max_depth: Term<'a>,
) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let bin = Binary::from_term(bin).map_err(|_| badarg("json"))?;
        let l = limits(max_bytes, max_depth, 1u64.encode(env))?;
        let text = std::str::from_utf8(bin.as_slice()).ok();
        Ok(match codec::check_limits(bin.as_slice(), &l) {
            Err(e) => NifError::Core(e).encode(env),
            _ => match text.and_then(|t| json_term(env, t)) {
                Some(t) => (atoms::ok(), t).encode(env),
                None => NifError::Core(FlowError::ParseError).encode(env),
            },
        })
    };
    reply(env, run())
}
