//! Explaining decisions: each stage notes what it decided for a packet and from which table
//! entry, like `ofproto/trace`. The fast path uses [`NoTrace`], which compiles to nothing.

/// Receives one line per stage decision for packet `i` of a batch.
pub trait Tracer {
    /// Whether lines are wanted (lets a stage skip building them).
    const ON: bool;
    fn note(&mut self, i: usize, stage: &'static str, line: std::fmt::Arguments<'_>);
}

/// The production tracer: does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTrace;

impl Tracer for NoTrace {
    const ON: bool = false;
    #[inline(always)]
    fn note(&mut self, _: usize, _: &'static str, _: std::fmt::Arguments<'_>) {}
}

/// Records every line (trace requests and tests; allocates, so never on the fast path).
#[derive(Debug, Default, Clone)]
pub struct TraceLog {
    pub lines: Vec<(usize, &'static str, String)>,
}

impl Tracer for TraceLog {
    const ON: bool = true;
    fn note(&mut self, i: usize, stage: &'static str, line: std::fmt::Arguments<'_>) {
        self.lines.push((i, stage, line.to_string()));
    }
}

impl TraceLog {
    /// The lines for packet `i`, formatted `stage: text`.
    pub fn for_packet(&self, i: usize) -> Vec<String> {
        self.lines
            .iter()
            .filter(|(p, _, _)| *p == i)
            .map(|(_, s, l)| format!("{s}: {l}"))
            .collect()
    }
}

/// `trace!(tr, i, "stage", "fmt", args..)`: a note that costs nothing when tracing is off.
#[macro_export]
macro_rules! trace {
    ($tr:expr, $i:expr, $stage:literal, $($arg:tt)*) => {
        if T::ON {
            $tr.note($i, $stage, format_args!($($arg)*));
        }
    };
}
