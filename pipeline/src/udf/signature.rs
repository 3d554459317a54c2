//! A UDF's source file read the way Arroyo reads it: the one `#[udf]` function's
//! name, argument and result types (Rust types mapped to Arrow types as
//! `arroyo-udf-common` maps them), whether it is an aggregate (`Vec<T>` arguments) or
//! async (with its `ordered`, `timeout` and `allowed_in_flight` options), and the
//! extra dependencies in a `/*\n[dependencies]\n...*/` comment.

use std::fmt;
use std::time::Duration;

use arrow::datatypes::DataType;
use syn::{FnArg, GenericArgument, Item, PathArguments, ReturnType, Type};

/// An Arrow type and whether the value may be null (`Option<T>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueType {
    pub data_type: DataType,
    pub nullable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Scalar,
    /// Every argument is a `Vec<T>`: called once per group, with the group's values.
    Aggregate,
    Async(AsyncOptions),
}

/// The plugin's async options (Arroyo's defaults: unordered, 5 s, 1000 in flight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncOptions {
    pub ordered: bool,
    pub timeout: Duration,
    pub allowed_in_flight: u32,
}

impl Default for AsyncOptions {
    fn default() -> Self {
        AsyncOptions { ordered: false, timeout: Duration::from_secs(5), allowed_in_flight: 1000 }
    }
}

/// What a UDF file declares.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub name: String,
    /// For an aggregate, the element types of its `Vec` arguments.
    pub args: Vec<ValueType>,
    pub result: ValueType,
    pub kind: Kind,
    /// The `[dependencies]` comment's table (without the plugin and chrono, which
    /// the build pins).
    pub dependencies: toml::Table,
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &ValueType| format!("{}{}", v.data_type, if v.nullable { "?" } else { "" });
        let args: Vec<String> = self.args.iter().map(show).collect();
        let args = match self.kind {
            Kind::Aggregate => args.iter().map(|a| format!("[{a}]")).collect::<Vec<_>>().join(", "),
            _ => args.join(", "),
        };
        write!(f, "{}({args}) -> {}", self.name, show(&self.result))
    }
}

impl Kind {
    pub fn label(&self) -> &'static str {
        match self {
            Kind::Scalar => "scalar",
            Kind::Aggregate => "aggregate",
            Kind::Async(_) => "async",
        }
    }
}

/// Reads a UDF file's signature; the error says what is wrong with it.
pub fn parse(source: &str) -> Result<Signature, String> {
    let file = syn::parse_file(source).map_err(|e| format!("not valid Rust: {e}"))?;
    let mut udfs = file.items.iter().filter_map(|item| match item {
        Item::Fn(f) if f.attrs.iter().any(is_udf_attribute) => Some(f),
        _ => None,
    });
    let function = udfs.next().ok_or("no function marked #[udf]")?;
    if udfs.next().is_some() {
        return Err("more than one #[udf] function: one per file".into());
    }
    let name = function.sig.ident.to_string();
    let mut args = Vec::new();
    let mut vec_args = 0;
    for arg in &function.sig.inputs {
        let FnArg::Typed(typed) = arg else { return Err(format!("{name}: `self` arguments are not supported")) };
        match vec_element(&typed.ty) {
            Some(element) => {
                vec_args += 1;
                args.push(value_type(element, false).map_err(|e| format!("{name}: {e}"))?);
            }
            None => args.push(value_type(&typed.ty, false).map_err(|e| format!("{name}: {e}"))?),
        }
    }
    if args.is_empty() {
        return Err(format!("{name}: a UDF takes at least one argument"));
    }
    let ReturnType::Type(_, result) = &function.sig.output else {
        return Err(format!("{name}: a UDF returns a value"));
    };
    let result = value_type(result, true).map_err(|e| format!("{name}: result: {e}"))?;
    let kind = match (function.sig.asyncness.is_some(), vec_args) {
        (true, 0) => Kind::Async(async_options(function).map_err(|e| format!("{name}: {e}"))?),
        (true, _) => return Err(format!("{name}: an async function cannot be an aggregate (Vec arguments)")),
        (false, 0) => Kind::Scalar,
        (false, n) if n == args.len() => Kind::Aggregate,
        (false, _) => return Err(format!("{name}: an aggregate takes only Vec<T> arguments")),
    };
    if kind == Kind::Aggregate {
        if let Some(bad) = args.iter().find(|a| !a.data_type.is_numeric()) {
            return Err(format!("{name}: an aggregate's Vec holds numbers, not {}", bad.data_type));
        }
    }
    Ok(Signature { name, args, result, kind, dependencies: dependencies(source)? })
}

fn is_udf_attribute(attribute: &syn::Attribute) -> bool {
    attribute.path().segments.last().is_some_and(|s| s.ident == "udf")
}

/// `T` of `Vec<T>`.
fn vec_element(ty: &Type) -> Option<&Type> {
    generic_of(ty, "Vec")
}

/// The type argument of `Name<T>`.
fn generic_of<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    match args.args.first()? {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    }
}

/// The Arrow type of a Rust argument (`owned` false) or result (`owned` true) type,
/// the types the plugin's macro compiles.
fn value_type(ty: &Type, owned: bool) -> Result<ValueType, String> {
    if let Some(inner) = generic_of(ty, "Option") {
        return Ok(ValueType { nullable: true, ..value_type(inner, owned)? });
    }
    let written = quote_type(ty);
    let data_type = match (written.as_str(), owned) {
        ("i8", _) => DataType::Int8,
        ("i16", _) => DataType::Int16,
        ("i32", _) => DataType::Int32,
        ("i64", _) => DataType::Int64,
        ("u8", _) => DataType::UInt8,
        ("u16", _) => DataType::UInt16,
        ("u32", _) => DataType::UInt32,
        ("u64", _) => DataType::UInt64,
        ("f32", _) => DataType::Float32,
        ("f64", _) => DataType::Float64,
        ("&str", false) | ("String", true) => DataType::Utf8,
        ("&[u8]", false) | ("Vec<u8>", true) => DataType::Binary,
        ("String", false) => return Err("take strings as &str".into()),
        ("&str", true) => return Err("return strings as String".into()),
        ("bool" | "SystemTime" | "std::time::SystemTime" | "Duration" | "std::time::Duration" | "f16", _) => {
            return Err(format!("`{written}` does not compile with arroyo-udf-plugin 0.2's macro: use a number or a string"))
        }
        _ => return Err(format!("unsupported type `{written}`")),
    };
    Ok(ValueType { data_type, nullable: false })
}

/// A type as written, without spaces (`& str` from the token stream becomes `&str`).
fn quote_type(ty: &Type) -> String {
    use quote::ToTokens;
    ty.to_token_stream().to_string().replace(' ', "")
}

/// `#[udf(ordered, timeout = "2s", allowed_in_flight = 10)]`.
fn async_options(function: &syn::ItemFn) -> Result<AsyncOptions, String> {
    let mut options = AsyncOptions::default();
    for attribute in function.attrs.iter().filter(|a| is_udf_attribute(a)) {
        if matches!(attribute.meta, syn::Meta::Path(_)) {
            continue;
        }
        attribute
            .parse_nested_meta(|meta| {
                let key = meta.path.get_ident().map(|i| i.to_string()).unwrap_or_default();
                match key.as_str() {
                    "ordered" => options.ordered = true,
                    "unordered" => options.ordered = false,
                    "allowed_in_flight" => {
                        let n: syn::LitInt = meta.value()?.parse()?;
                        options.allowed_in_flight = n.base10_parse()?;
                    }
                    "timeout" => {
                        let text: syn::LitStr = meta.value()?.parse()?;
                        options.timeout = parse_timeout(&text.value()).ok_or_else(|| meta.error("a timeout like \"5s\" or \"500ms\""))?;
                    }
                    _ => return Err(meta.error(format!("unknown option `{key}` (ordered, unordered, timeout, allowed_in_flight)"))),
                }
                Ok(())
            })
            .map_err(|e| format!("#[udf(...)]: {e}"))?;
    }
    Ok(options)
}

fn parse_timeout(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = text[..split].parse().ok()?;
    Some(match text[split..].trim() {
        "ns" | "nanos" => Duration::from_nanos(n),
        "µs" | "us" | "micros" => Duration::from_micros(n),
        "ms" | "millis" => Duration::from_millis(n),
        "s" | "secs" | "seconds" => Duration::from_secs(n),
        "m" | "mins" | "minutes" => Duration::from_secs(n * 60),
        "h" | "hrs" | "hours" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

/// The table of the `/*\n[dependencies]\n...*/` comment; empty if none.
fn dependencies(source: &str) -> Result<toml::Table, String> {
    const OPEN: &str = "/*\n[dependencies]\n";
    let mut found = source.match_indices(OPEN);
    let Some((at, _)) = found.next() else { return Ok(toml::Table::new()) };
    if found.next().is_some() {
        return Err("more than one [dependencies] comment".into());
    }
    let body = &source[at + 3..];
    let end = body.find("*/").ok_or("the [dependencies] comment is not closed")?;
    let toml_text = &body[..end];
    let table: toml::Table = toml::from_str(toml_text).map_err(|e| format!("the [dependencies] comment: {e}"))?;
    match table.get("dependencies") {
        Some(toml::Value::Table(deps)) => {
            // Pinned by the generated crate, as Arroyo pins the plugin.
            let mut deps = deps.clone();
            deps.remove("arroyo-udf-plugin");
            deps.remove("chrono");
            Ok(deps)
        }
        _ => Err("the [dependencies] comment has no [dependencies] table".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_aggregate_and_async_signatures_are_read_like_arroyo_reads_them() {
        let scalar = parse("use arroyo_udf_plugin::udf;\n#[udf]\nfn f(a: &str, b: Option<i64>, c: &[u8]) -> Option<String> { None }").unwrap();
        assert_eq!(scalar.name, "f");
        assert_eq!(scalar.kind, Kind::Scalar);
        assert_eq!(scalar.to_string(), "f(Utf8, Int64?, Binary) -> Utf8?");

        let aggregate = parse("#[udf] fn m(scores: Vec<f64>) -> f64 { 0.0 }").unwrap();
        assert_eq!((aggregate.kind.clone(), aggregate.to_string()), (Kind::Aggregate, "m([Float64]) -> Float64".into()));

        let lookup = parse("#[arroyo_udf_plugin::udf(ordered, timeout = \"250ms\", allowed_in_flight = 8)]\nasync fn l(id: i64) -> String { String::new() }").unwrap();
        assert_eq!(lookup.kind, Kind::Async(AsyncOptions { ordered: true, timeout: Duration::from_millis(250), allowed_in_flight: 8 }));
    }

    #[test]
    fn the_dependencies_comment_is_read() {
        let err = parse("/*\n[dependencies]\nregex = \n*/\n#[udf] fn f(a: &str) -> i64 { 0 }").unwrap_err();
        assert!(err.contains("the [dependencies] comment"), "{err}");
        let s = parse("/*\n[dependencies]\nregex = \"1\"\nserde = { version = \"1\", features = [\"derive\"] }\n*/\n#[udf] fn f(a: &str) -> i64 { 0 }").unwrap();
        assert_eq!(s.dependencies.get("regex").and_then(|v| v.as_str()), Some("1"));
        assert!(s.dependencies.get("serde").and_then(|v| v.as_table()).is_some_and(|t| t.contains_key("features")));
    }

    #[test]
    fn what_arroyo_cannot_build_is_refused_with_the_reason() {
        let cases = [
            ("fn f(a: i64) -> i64 { a }", "no function marked #[udf]"),
            ("#[udf] fn f(a: i64) -> i64 { a }\n#[udf] fn g(a: i64) -> i64 { a }", "more than one"),
            ("#[udf] fn f(a: String) -> i64 { 0 }", "&str"),
            ("#[udf] fn f(a: bool) -> i64 { 0 }", "does not compile"),
            ("#[udf] fn f(a: i64) { }", "returns a value"),
            ("#[udf] fn f() -> i64 { 0 }", "at least one argument"),
            ("#[udf] fn f(a: Vec<f64>, b: i64) -> i64 { 0 }", "only Vec<T>"),
            ("#[udf(eventually)] async fn f(a: i64) -> i64 { 0 }", "unknown option `eventually`"),
            ("#[udf] fn f(a: i64 -> i64 { 0 }", "not valid Rust"),
        ];
        for (source, want) in cases {
            let err = parse(source).unwrap_err();
            assert!(err.contains(want), "{source}\n  error: {err}\n  wanted: {want}");
        }
    }
}
