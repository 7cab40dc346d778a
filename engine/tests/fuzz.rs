//! Fuzzing `rkd-orch plan` (the real binary) with mutations of the shipped recipes: it must
//! never panic or abort, stay within a memory bound, exit 0 or 2, and name `file:line:column`
//! in every refusal (exit 2). docs/fuzzing.md describes both modes:
//!
//!   cargo test --release --test fuzz                                 # 100 cases, seconds
//!   FUZZ_SECONDS=600 cargo test --release --test fuzz -- --ignored fuzz_long
//!
//! A case is a shipped recipe, changed structurally (on its YAML tree, re-emitted as YAML:
//! keys deleted, duplicated, renamed or added, values swapped, retyped, made huge, negative,
//! long, deeply nested or empty) and/or textually (bit flips, truncation, YAML syntax
//! characters inserted, indentation changed, lines dropped or repeated). Cases are drawn by
//! proptest from a fixed seed, so a run is reproducible; a failing case is shrunk and its
//! recipe written under the target directory.

#[path = "support/measured.rs"]
mod measured;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// The planner's memory bound under fuzzing. Cases plan with `--max-stages 5000` (the limit
/// is the same mechanism at any size; a small one keeps each case fast), and the shipped
/// recipes plan in about 35 MiB.
const MAX_RSS_KIB: u64 = 512 * 1024;
const MAX_STAGES: &str = "5000";

/// A recipe's YAML tree: what the structural mutations work on.
#[derive(Debug, Clone)]
enum Y {
    S(String),
    L(Vec<Y>),
    M(Entries),
}

/// A mapping's entries, in order.
type Entries = Vec<(String, Y)>;

/// A case: which shipped recipe, its tree mutations, its text mutations.
type Case = (usize, Vec<Mutation>, Vec<Mutation>);

fn from_node(n: &marked_yaml::Node) -> Y {
    match n {
        marked_yaml::Node::Scalar(s) => Y::S(s.as_str().to_string()),
        marked_yaml::Node::Sequence(l) => Y::L(l.iter().map(from_node).collect()),
        marked_yaml::Node::Mapping(m) => Y::M(
            m.iter()
                .map(|(k, v)| (k.as_str().to_string(), from_node(v)))
                .collect(),
        ),
    }
}

/// A scalar as YAML: plain where that reads back as the same text, else double-quoted (JSON
/// string escapes are YAML's too).
fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+/".contains(c))
        && !s.starts_with(['-', '.'])
        || s.parse::<f64>().is_ok();
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("a string")
    }
}

/// Block-style YAML, empty collections in flow style.
fn emit(y: &Y, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match y {
        Y::S(s) => {
            out.push(' ');
            out.push_str(&scalar(s));
            out.push('\n');
        }
        Y::L(l) if l.is_empty() => out.push_str(" []\n"),
        Y::M(m) if m.is_empty() => out.push_str(" {}\n"),
        Y::L(l) => {
            out.push('\n');
            for v in l {
                out.push_str(&pad);
                out.push('-');
                emit(v, indent + 2, out);
            }
        }
        Y::M(m) => {
            out.push('\n');
            for (k, v) in m {
                key(k, &pad, out);
                emit(v, indent + 2, out);
            }
        }
    }
}

/// A mapping key and its `:`. YAML limits implicit keys to 1024 characters; a longer one
/// (a 70,000-character stage name) is written as an explicit `? KEY` entry.
fn key(k: &str, pad: &str, out: &mut String) {
    if k.len() > 1000 {
        out.push_str(&format!("{pad}? {}\n{pad}:", scalar(k)));
    } else {
        out.push_str(&format!("{pad}{}:", scalar(k)));
    }
}

fn document(y: &Y) -> String {
    let mut out = String::new();
    match y {
        Y::M(m) => {
            for (k, v) in m {
                key(k, "", &mut out);
                emit(v, 2, &mut out);
            }
        }
        other => emit(other, 0, &mut out),
    }
    out
}

/// Values that have broken parsers before: huge, negative, non-finite, empty, long.
fn special(i: usize) -> Y {
    const VALUES: &[&str] = &[
        "18446744073709551617",
        "4294967298",
        "9223372036854775808",
        "1e400",
        "-1",
        "-9223372036854775809",
        "-0.5",
        "0",
        ".nan",
        "-.inf",
        "",
        "~",
        "true",
        "1000000000000",
        "99999999999999999999999999999999",
    ];
    match i % (VALUES.len() + 2) {
        n if n < VALUES.len() => Y::S(VALUES[n].to_string()),
        n if n == VALUES.len() => Y::S("x".repeat(70_000)),
        _ => Y::S("é\u{0}\u{202e}".repeat(3)),
    }
}

/// Keys of the recipe language (and one long one): renamed to, or added.
fn word(i: usize) -> String {
    const WORDS: &[&str] = &[
        "kind",
        "model",
        "teacher",
        "matrix",
        "generations",
        "seeds",
        "seed",
        "loss",
        "data",
        "defaults",
        "stages",
        "epochs",
        "include",
        "exclude",
        "train_classes",
        "classes",
        "hidden",
        "name",
        "gen0",
        "born[gen=2]",
    ];
    match i % (WORDS.len() + 1) {
        n if n < WORDS.len() => WORDS[n].to_string(),
        _ => "s".repeat(70_000),
    }
}

/// A value to add under a new key: a special scalar or a large structure.
fn added(i: usize) -> Y {
    match i % 4 {
        0 => Y::L((0..2000).map(|n| Y::S(n.to_string())).collect()),
        1 => Y::M(vec![
            (
                "seeds".into(),
                Y::L((0..300).map(|n| Y::S(n.to_string())).collect()),
            ),
            (
                "epochs".into(),
                Y::L((0..300).map(|n| Y::S(n.to_string())).collect()),
            ),
        ]),
        2 => Y::M(vec![("kind".into(), Y::S("self_distill".into()))]),
        _ => special(i / 4),
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    // On the tree: `n` picks a node (or a mapping) in pre-order, modulo their number.
    Delete(usize, usize),
    Duplicate(usize, usize),
    SwapValues(usize, usize),
    Retype(usize, u8),
    Special(usize, usize),
    Nest(usize, u16),
    Empty(usize, bool),
    Rename(usize, usize, usize),
    Add(usize, usize, usize),
    // On the text: `at` picks a byte (or a line), modulo the length.
    Flip(usize, u8),
    Truncate(usize),
    InsertSyntax(usize, usize),
    Indent(usize, i8),
    DropLine(usize),
    RepeatLine(usize),
}

fn tree_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<usize>()).prop_map(|(n, k)| Mutation::Delete(n, k)),
        (any::<usize>(), any::<usize>()).prop_map(|(n, k)| Mutation::Duplicate(n, k)),
        (any::<usize>(), any::<usize>()).prop_map(|(n, k)| Mutation::SwapValues(n, k)),
        (any::<usize>(), any::<u8>()).prop_map(|(n, t)| Mutation::Retype(n, t)),
        (any::<usize>(), any::<usize>()).prop_map(|(n, v)| Mutation::Special(n, v)),
        (any::<usize>(), 1..400u16).prop_map(|(n, d)| Mutation::Nest(n, d)),
        (any::<usize>(), any::<bool>()).prop_map(|(n, l)| Mutation::Empty(n, l)),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(n, k, w)| Mutation::Rename(n, k, w)),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(n, w, v)| Mutation::Add(n, w, v)),
    ]
}

fn text_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(at, c)| Mutation::InsertSyntax(at, c)),
        (any::<usize>(), -4..5i8).prop_map(|(at, d)| Mutation::Indent(at, d)),
        any::<usize>().prop_map(Mutation::DropLine),
        any::<usize>().prop_map(Mutation::RepeatLine),
    ]
}

/// A case: which shipped recipe, the tree mutations (none: the text as shipped, comments
/// included), then the text mutations.
fn case() -> impl Strategy<Value = Case> {
    (
        any::<usize>(),
        prop::collection::vec(tree_mutation(), 0..4),
        prop::collection::vec(text_mutation(), 0..3),
    )
}

/// Calls `f` on node number `*n` in pre-order (counting down); true once it has.
fn at_node(y: &mut Y, n: &mut usize, f: &mut dyn FnMut(&mut Y)) -> bool {
    if *n == 0 {
        f(y);
        return true;
    }
    *n -= 1;
    match y {
        Y::S(_) => false,
        Y::L(l) => l.iter_mut().any(|v| at_node(v, n, f)),
        Y::M(m) => m.iter_mut().any(|(_, v)| at_node(v, n, f)),
    }
}

fn count(y: &Y, mappings_only: bool) -> usize {
    let own = usize::from(!mappings_only || matches!(y, Y::M(_)));
    own + match y {
        Y::S(_) => 0,
        Y::L(l) => l.iter().map(|v| count(v, mappings_only)).sum(),
        Y::M(m) => m.iter().map(|(_, v)| count(v, mappings_only)).sum(),
    }
}

/// Calls `f` on mapping number `n` (modulo their number).
fn at_mapping(y: &mut Y, n: usize, f: &mut dyn FnMut(&mut Entries)) {
    fn walk(y: &mut Y, n: &mut usize, f: &mut dyn FnMut(&mut Entries)) -> bool {
        let Y::M(m) = y else {
            return match y {
                Y::L(l) => l.iter_mut().any(|v| walk(v, n, f)),
                _ => false,
            };
        };
        if *n == 0 {
            f(m);
            return true;
        }
        *n -= 1;
        m.iter_mut().any(|(_, v)| walk(v, n, f))
    }
    let total = count(y, true).max(1);
    walk(y, &mut (n % total), f);
}

fn mutate_tree(y: &mut Y, m: &Mutation) {
    let nodes = count(y, false).max(1);
    let node = |y: &mut Y, n: usize, f: &mut dyn FnMut(&mut Y)| {
        at_node(y, &mut (n % nodes), f);
    };
    match *m {
        Mutation::Delete(n, k) => at_mapping(y, n, &mut |m| {
            if !m.is_empty() {
                m.remove(k % m.len());
            }
        }),
        Mutation::Duplicate(n, k) => at_mapping(y, n, &mut |m| {
            if !m.is_empty() {
                let e = m[k % m.len()].clone();
                m.insert(k % m.len(), e);
            }
        }),
        Mutation::SwapValues(n, k) => at_mapping(y, n, &mut |m| {
            if m.len() >= 2 {
                let (a, b) = (k % m.len(), (k + 1) % m.len());
                let va = m[a].1.clone();
                m[a].1 = std::mem::replace(&mut m[b].1, va);
            }
        }),
        Mutation::Retype(n, t) => node(y, n, &mut |v| {
            let old = v.clone();
            *v = match t % 4 {
                0 => Y::L(vec![old]),
                1 => Y::M(vec![("x".into(), old)]),
                2 => Y::S("1".into()),
                _ => Y::S("abc".into()),
            }
        }),
        Mutation::Special(n, s) => node(y, n, &mut |v| *v = special(s)),
        Mutation::Nest(n, depth) => node(y, n, &mut |v| {
            for d in 0..depth {
                let inner = std::mem::replace(v, Y::S(String::new()));
                *v = if d % 2 == 0 {
                    Y::L(vec![inner])
                } else {
                    Y::M(vec![("k".into(), inner)])
                };
            }
        }),
        Mutation::Empty(n, list) => node(y, n, &mut |v| {
            *v = if list { Y::L(vec![]) } else { Y::M(vec![]) }
        }),
        Mutation::Rename(n, k, w) => at_mapping(y, n, &mut |m| {
            if !m.is_empty() {
                let i = k % m.len();
                m[i].0 = word(w);
            }
        }),
        Mutation::Add(n, w, v) => at_mapping(y, n, &mut |m| m.push((word(w), added(v)))),
        _ => {}
    }
}

fn mutate_text(text: &mut Vec<u8>, m: &Mutation) {
    const SYNTAX: &[&str] = &[
        ":", "- ", "[", "]", "{", "}", "#", "&a ", "*a", "!!str ", "|", ">", "'", "\"", "%", "@",
        "`", "? ", ",", "\n", "\t", "---\n", "...\n", "<<: ", "\\",
    ];
    let len = text.len().max(1);
    let lines = |text: &Vec<u8>| -> Vec<Vec<u8>> {
        text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
    };
    match *m {
        // Only ASCII bytes, and only their low seven bits, so the text stays UTF-8: invalid
        // UTF-8 is refused before parsing, by the file reader.
        Mutation::Flip(at, bit) => {
            let i = at % len;
            if let Some(b) = text.get_mut(i).filter(|b| b.is_ascii()) {
                *b ^= 1 << (bit % 7);
            }
        }
        Mutation::Truncate(at) => text.truncate(at % len),
        Mutation::InsertSyntax(at, c) => {
            let i = (at % len).min(text.len());
            let s = SYNTAX[c % SYNTAX.len()].as_bytes();
            text.splice(i..i, s.iter().copied());
        }
        Mutation::Indent(at, d) => {
            let mut ls = lines(text);
            let i = at % ls.len();
            if d >= 0 {
                let mut l = vec![b' '; d as usize];
                if d == 0 {
                    l = vec![b'\t'];
                }
                l.extend_from_slice(&ls[i]);
                ls[i] = l;
            } else {
                let strip = (-d as usize).min(ls[i].iter().take_while(|&&b| b == b' ').count());
                ls[i].drain(..strip);
            }
            *text = ls.join(&b'\n');
        }
        Mutation::DropLine(at) => {
            let mut ls = lines(text);
            let i = at % ls.len();
            ls.remove(i);
            *text = ls.join(&b'\n');
        }
        Mutation::RepeatLine(at) => {
            let mut ls = lines(text);
            let i = at % ls.len();
            let l = ls[i].clone();
            ls.insert(i, l);
            *text = ls.join(&b'\n');
        }
        _ => {}
    }
}

/// The shipped recipes: (file name, text).
fn shipped() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("recipes/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("a shipped recipe"))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no recipes in {}", dir.display());
    out
}

/// The recipe text of a case.
fn recipe_text(recipes: &[(String, String)], (which, tree, text): &Case) -> String {
    let source = &recipes[which % recipes.len()].1;
    let mut bytes = if tree.is_empty() {
        source.clone().into_bytes()
    } else {
        let doc = marked_yaml::parse_yaml(0, source).expect("a shipped recipe parses");
        let mut y = from_node(&doc);
        for m in tree {
            mutate_tree(&mut y, m);
        }
        document(&y).into_bytes()
    };
    for m in text {
        mutate_text(&mut bytes, m);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[derive(Default)]
struct Tally {
    inputs: usize,
    /// Exit code (or "signal N") → cases.
    exits: BTreeMap<String, usize>,
    max_rss_kib: u64,
    failures: Vec<String>,
}

/// Plans one recipe text with the binary and checks the promises; Err says which failed.
fn check(dir: &Path, text: &str, tally: &RefCell<Tally>) -> Result<(), String> {
    let path = dir.join("recipe.yaml");
    std::fs::write(&path, text).map_err(|e| format!("write: {e}"))?;
    let runs = dir.join("runs");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rkd-orch"));
    cmd.args(["plan", "--max-stages", MAX_STAGES, "--runs-dir"])
        .arg(&runs)
        .arg(&path);
    // Guards for the machine, far above the bound checked below: a runaway case fails
    // instead of swapping or hanging the test.
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let cap = |res, v| {
                let l = libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                };
                libc::setrlimit(res, &l);
            };
            cap(libc::RLIMIT_AS, 8 << 30);
            cap(libc::RLIMIT_CPU, 120);
            Ok(())
        });
    }
    let m = measured::run(&mut cmd);
    let stderr = String::from_utf8_lossy(&m.stderr);
    let exit = match (
        m.status.code(),
        std::os::unix::process::ExitStatusExt::signal(&m.status),
    ) {
        (Some(c), _) => c.to_string(),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown".into(),
    };
    {
        let mut t = tally.borrow_mut();
        t.inputs += 1;
        *t.exits.entry(exit.clone()).or_default() += 1;
        t.max_rss_kib = t.max_rss_kib.max(m.max_rss_kib);
    }
    let first = stderr.lines().next().unwrap_or("");
    if m.max_rss_kib > MAX_RSS_KIB {
        return Err(format!(
            "peak RSS {} MiB > {} MiB",
            m.max_rss_kib / 1024,
            MAX_RSS_KIB / 1024
        ));
    }
    match exit.as_str() {
        "0" => Ok(()),
        "2" => {
            let prefix = format!("{}:", path.display());
            let pos = first.strip_prefix(&prefix).and_then(|rest| {
                let mut parts = rest.splitn(3, ':');
                let line: usize = parts.next()?.parse().ok()?;
                let col: usize = parts.next()?.parse().ok()?;
                (line >= 1 && col >= 1).then_some(())
            });
            match pos {
                Some(()) => Ok(()),
                None => Err(format!("exit 2 without file:line:column: {first}")),
            }
        }
        other => Err(format!("exit {other}: {}", stderr.trim_end())),
    }
}

/// Runs `cases` cases from `seed`; a failure is shrunk, its recipe saved, and returned.
fn run_cases(seed: u64, cases: u32, tally: &RefCell<Tally>) -> Result<(), String> {
    let recipes = shipped();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        cases,
        max_shrink_iters: 200,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        ..Config::default()
    };
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let result = runner.run(&case(), |c| {
        let text = recipe_text(&recipes, &c);
        check(dir.path(), &text, tally).map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let detail = e.to_string();
            let saved = save_failure(&recipes, &e);
            Err(format!("{detail}\nrecipe saved as {}", saved.display()))
        }
    }
}

/// Writes the minimal failing recipe under the target directory, for `rkd-orch plan FILE`.
fn save_failure(
    recipes: &[(String, String)],
    e: &proptest::test_runner::TestError<Case>,
) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    std::fs::create_dir_all(&dir).expect("fuzz-failures/");
    let text = match e {
        proptest::test_runner::TestError::Fail(_, c) => recipe_text(recipes, c),
        proptest::test_runner::TestError::Abort(why) => why.to_string(),
    };
    let n = std::fs::read_dir(&dir).map_or(0, |d| d.count());
    let path = dir.join(format!("case-{n}.yaml"));
    std::fs::write(&path, text).expect("save the failing recipe");
    path
}

fn summary(t: &Tally, elapsed: Duration) -> String {
    let exits: Vec<String> = t.exits.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(
        "fuzz: {} inputs in {:.0} s; exit codes {{{}}}; peak RSS {} MiB; failures {}",
        t.inputs,
        elapsed.as_secs_f64(),
        exits.join(", "),
        t.max_rss_kib / 1024,
        t.failures.len()
    )
}

/// The normal suite's share: a fixed seed and 100 cases (a few seconds).
#[test]
fn fuzz_plan_of_mutated_recipes() {
    let tally = RefCell::new(Tally::default());
    let start = Instant::now();
    let result = run_cases(0x5eed, 100, &tally);
    eprintln!("{}", summary(&tally.borrow(), start.elapsed()));
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The long mode: batches of cases from successive seeds for `FUZZ_SECONDS` (default 300;
/// `FUZZ_SEED` picks the first seed), then the counts; every failure is listed.
#[test]
#[ignore = "minutes: cargo test --release --test fuzz -- --ignored fuzz_long"]
fn fuzz_long() {
    let seconds: u64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let first: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let tally = RefCell::new(Tally::default());
    let start = Instant::now();
    let mut seed = first;
    while start.elapsed() < Duration::from_secs(seconds) {
        if let Err(e) = run_cases(seed, 50, &tally) {
            eprintln!("seed {seed}: {e}");
            tally
                .borrow_mut()
                .failures
                .push(format!("seed {seed}: {e}"));
        }
        seed += 1;
    }
    let t = tally.borrow();
    println!("{} (seeds {first}..{seed})", summary(&t, start.elapsed()));
    assert!(t.failures.is_empty(), "{}", t.failures.join("\n\n"));
}
