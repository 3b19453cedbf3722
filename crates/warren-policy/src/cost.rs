//! What a CEL expression may cost. A policy is written by a tenant and evaluated on the
//! edge's threads for other tenants' visitors too, so its cost is bounded twice:
//! - at compile time, by its shape: syntax-tree nodes, comprehension (macro) calls and how
//!   deeply they nest, and the length of string literals ([`check`]);
//! - at run time, by a budget of steps per message ([`Budget`], [`Compiled::execute`]): every
//!   function or operator call and every comprehension iteration is charged one step plus
//!   the size of what it made (the elements of a list or map, 64 bytes of a string), so
//!   accumulating macros (`map`, `filter`) pay for what they copy. An evaluation that runs
//!   out fails; the caller treats that as a refusal, never as "no match".
//!
//! Metering is a rewrite of the syntax tree: each call and each comprehension step is wrapped
//! in `__warren_charge(...)`, which counts and returns its argument unchanged. The fast path
//! (`fast.rs`) reads the message directly and is not metered; its cost is linear in the
//! expression.

use std::cell::Cell;

use cel::common::ast::{CallExpr, ComprehensionExpr, Expr, IdedExpr};
use cel::objects::Value;

/// Syntax-tree nodes one expression may have.
pub const MAX_NODES: usize = 1_000;
/// Comprehension macros (`all`, `exists`, `exists_one`, `map`, `filter`) in one expression.
pub const MAX_COMPREHENSIONS: usize = 16;
/// How deeply comprehensions may nest (`a.all(x, b.all(y, ...))` is 2).
pub const MAX_NESTING: usize = 2;
/// Longest string literal, in bytes.
pub const MAX_LITERAL: usize = 4096;
/// Steps the expressions evaluated for one message (a connection, a request, a response)
/// may take together: about 4 ms of one core at worst.
pub const MAX_STEPS: u64 = 10_000;

/// The name of the charging function; no policy may call it itself.
pub(crate) const CHARGE: &str = "__warren_charge";
/// Wraps what a macro iterates: anything but a list or map is an error CEL reports, where
/// cel 0.11 would panic (`null.all(...)`, from a header that is not there, is the usual case).
pub(crate) const ITERABLE: &str = "__warren_iterable";

/// A compiled expression: the program as written (for its references and the fast path) and
/// its metered form (what is evaluated).
pub(crate) struct Compiled {
    program: cel::Program,
    metered: IdedExpr,
}

impl std::ops::Deref for Compiled {
    type Target = cel::Program;

    fn deref(&self) -> &cel::Program {
        &self.program
    }
}

thread_local! {
    /// Steps left for the message being evaluated on this thread; `None` outside a [`Budget`].
    static LEFT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The step budget of one message: every expression evaluated while it lives draws on it.
pub(crate) struct Budget {
    outer: Option<u64>,
}

impl Budget {
    /// Starts a budget of `steps` on this thread (nested budgets restore the outer one).
    pub(crate) fn start(steps: u64) -> Budget {
        Budget { outer: LEFT.with(|l| l.replace(Some(steps))) }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        LEFT.with(|l| l.set(self.outer));
    }
}

/// Why an evaluation gave no value.
pub(crate) enum Failure {
    /// CEL's own error.
    Cel(cel::ExecutionError),
    /// The CEL library panicked (cel 0.11 has `todo!()`s for some type combinations).
    Panic,
    /// The evaluation ran out of steps.
    Budget,
}

impl Compiled {
    /// Checks `program`'s shape and makes its metered form.
    pub(crate) fn new(program: cel::Program, source: &str) -> Result<Compiled, String> {
        check(program.expression(), source)?;
        let metered = meter(program.expression().clone());
        Ok(Compiled { program, metered })
    }

    /// Evaluates the metered form, drawing on the message's [`Budget`] (or a budget of
    /// [`MAX_STEPS`] of its own outside one). A panic inside the CEL library is an error like
    /// any other, so one visitor's request can never take down the task serving it, nor a
    /// Bind its RPC.
    pub(crate) fn execute(&self, ctx: &cel::Context<'_>) -> Result<Value, Failure> {
        let _own = LEFT.with(|l| l.get()).is_none().then(|| Budget::start(MAX_STEPS));
        if LEFT.with(|l| l.get()) == Some(0) {
            return Err(Failure::Budget);
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Value::resolve(&self.metered, ctx)));
        let exhausted = LEFT.with(|l| l.get()) == Some(0);
        match r {
            _ if exhausted => Err(Failure::Budget),
            Err(_) => Err(Failure::Panic),
            Ok(r) => r.map_err(Failure::Cel),
        }
    }
}

/// Takes `steps` from the message's budget; false once it is spent (always true outside a
/// [`Budget`]).
pub(crate) fn spend(steps: u64) -> bool {
    LEFT.with(|l| match l.get() {
        None => true,
        Some(left) => {
            let left = left.saturating_sub(steps);
            l.set(Some(left));
            left > 0
        }
    })
}

/// The iteration guard, registered in every evaluation's context.
pub(crate) fn iterable(v: Value) -> cel::ResolveResult {
    match v {
        Value::List(_) | Value::Map(_) => Ok(v),
        other => Err(cel::ExecutionError::UnsupportedTargetType { target: other }),
    }
}

/// The charging function, registered in every evaluation's context.
pub(crate) fn charge(v: Value) -> cel::ResolveResult {
    let cost = 1 + match &v {
        Value::List(l) => l.len() as u64,
        Value::Map(m) => m.map.len() as u64,
        Value::String(s) => (s.len() / 64) as u64,
        Value::Bytes(b) => (b.len() / 64) as u64,
        _ => 0,
    };
    let left = LEFT.with(|l| {
        let left = l.get().map(|left| left.saturating_sub(cost));
        l.set(left);
        left
    });
    if left == Some(0) {
        return Err(cel::ExecutionError::function_error(CHARGE, "the expression took too many steps"));
    }
    Ok(v)
}

/// Refuses an expression whose shape costs too much, naming the limit.
fn check(e: &IdedExpr, source: &str) -> Result<(), String> {
    let mut shape = Shape::default();
    shape.walk(e, 0);
    let short: String = source.chars().take(80).collect();
    let limit = |what: String| Err(format!("expression {short:?} is too costly: {what}"));
    if shape.nodes > MAX_NODES {
        return limit(format!("{} syntax nodes, at most {MAX_NODES}", shape.nodes));
    }
    if shape.comprehensions > MAX_COMPREHENSIONS {
        return limit(format!(
            "{} macro calls (all, exists, exists_one, map, filter), at most {MAX_COMPREHENSIONS}",
            shape.comprehensions
        ));
    }
    if shape.nesting > MAX_NESTING {
        return limit(format!("macros nested {} deep, at most {MAX_NESTING}", shape.nesting));
    }
    if shape.longest_literal > MAX_LITERAL {
        return limit(format!("a string literal of {} bytes, at most {MAX_LITERAL}", shape.longest_literal));
    }
    if shape.calls_charge {
        return Err(format!("expression {short:?} calls a function internal to warren"));
    }
    if shape.has_struct {
        return Err(format!(
            "expression {short:?} builds a message (Name{{field: ...}}), which policies cannot"
        ));
    }
    Ok(())
}

#[derive(Default)]
struct Shape {
    nodes: usize,
    comprehensions: usize,
    nesting: usize,
    longest_literal: usize,
    calls_charge: bool,
    has_struct: bool,
}

impl Shape {
    fn walk(&mut self, e: &IdedExpr, depth: usize) {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return;
        }
        match &e.expr {
            Expr::Unspecified | Expr::Ident(_) => {}
            Expr::Literal(v) => {
                if let cel::common::value::CelVal::String(s) = v {
                    self.longest_literal = self.longest_literal.max(s.len());
                }
            }
            Expr::Call(c) => {
                self.calls_charge |= c.func_name == CHARGE || c.func_name == ITERABLE;
                if let Some(t) = &c.target {
                    self.walk(t, depth);
                }
                for a in &c.args {
                    self.walk(a, depth);
                }
            }
            Expr::Comprehension(c) => {
                self.comprehensions += 1;
                self.nesting = self.nesting.max(depth + 1);
                self.walk(&c.iter_range, depth);
                self.walk(&c.accu_init, depth);
                for inner in [&c.loop_cond, &c.loop_step, &c.result] {
                    self.walk(inner, depth + 1);
                }
            }
            Expr::List(l) => {
                for x in &l.elements {
                    self.walk(x, depth);
                }
            }
            Expr::Map(m) => {
                for entry in &m.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(me) = &entry.expr {
                        self.walk(&me.key, depth);
                        self.walk(&me.value, depth);
                    }
                }
            }
            Expr::Select(s) => self.walk(&s.operand, depth),
            Expr::Struct(s) => {
                self.has_struct = true;
                for entry in &s.entries {
                    if let cel::common::ast::EntryExpr::StructField(f) = &entry.expr {
                        self.walk(&f.value, depth);
                    }
                }
            }
        }
    }
}

/// Wraps every call and every comprehension step in [`CHARGE`].
fn meter(mut e: IdedExpr) -> IdedExpr {
    e.expr = match e.expr {
        Expr::Call(mut c) => {
            c.target = c.target.map(|t| Box::new(meter(*t)));
            c.args = c.args.into_iter().map(meter).collect();
            Expr::Call(CallExpr {
                func_name: CHARGE.into(),
                target: None,
                args: vec![IdedExpr { id: e.id, expr: Expr::Call(c) }],
            })
        }
        Expr::Comprehension(c) => {
            let c = *c;
            let loop_step = meter(c.loop_step);
            let charged = IdedExpr {
                id: loop_step.id,
                expr: Expr::Call(CallExpr { func_name: CHARGE.into(), target: None, args: vec![loop_step] }),
            };
            let range = meter(c.iter_range);
            let guarded = IdedExpr {
                id: range.id,
                expr: Expr::Call(CallExpr { func_name: ITERABLE.into(), target: None, args: vec![range] }),
            };
            Expr::Comprehension(Box::new(ComprehensionExpr {
                iter_range: guarded,
                accu_init: meter(c.accu_init),
                loop_cond: meter(c.loop_cond),
                loop_step: charged,
                result: meter(c.result),
                ..c
            }))
        }
        Expr::List(mut l) => {
            l.elements = l.elements.into_iter().map(meter).collect();
            Expr::List(l)
        }
        Expr::Map(mut m) => {
            for entry in &mut m.entries {
                if let cel::common::ast::EntryExpr::MapEntry(me) = &mut entry.expr {
                    me.key = meter(std::mem::take(&mut me.key));
                    me.value = meter(std::mem::take(&mut me.value));
                }
            }
            Expr::Map(m)
        }
        Expr::Select(mut s) => {
            s.operand = Box::new(meter(*s.operand));
            Expr::Select(s)
        }
        other => other,
    };
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(src: &str) -> Result<Compiled, String> {
        Compiled::new(cel::Program::compile(src).map_err(|e| e.to_string())?, src)
    }

    fn list(n: usize) -> String {
        format!("[{}]", (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(","))
    }

    #[test]
    fn shapes_over_a_limit_are_refused_by_name() {
        let deep = format!("{l}.all(a, {l}.all(b, {l}.all(c, true)))", l = list(3));
        assert!(compiled(&deep).err().unwrap().contains("nested 3 deep"));
        let many = (0..17).map(|_| "[1].exists(x, x == 1)").collect::<Vec<_>>().join(" && ");
        assert!(compiled(&many).err().unwrap().contains("17 macro calls"));
        let big = list(1200);
        assert!(compiled(&format!("{big}.size() > 0")).err().unwrap().contains("syntax nodes"));
        let long = format!("'{}' == 'x'", "a".repeat(5000));
        assert!(compiled(&long).err().unwrap().contains("string literal of 5000 bytes"));
        assert!(compiled("__warren_charge(1) == 1").err().unwrap().contains("internal"));
        let fine = format!("{l}.all(a, {l}.exists(b, a == b))", l = list(50));
        assert!(compiled(&fine).is_ok());
    }

    #[test]
    fn metered_evaluation_gives_the_same_answers() {
        let ctx = crate::vars::root().new_inner_scope();
        for (src, want) in [
            ("[1, 2, 3].all(x, x > 0)", Value::Bool(true)),
            ("[1, 2, 3].exists(x, x == 4)", Value::Bool(false)),
            ("[1, 2, 3].map(x, x * 2) == [2, 4, 6]", Value::Bool(true)),
            ("[1, 2, 3].filter(x, x > 1).size()", Value::Int(2)),
            ("{'a': 1}.exists(k, k == 'a')", Value::Bool(true)),
            ("'abc'.startsWith('a') && !('abc'.endsWith('a'))", Value::Bool(true)),
        ] {
            let c = compiled(src).unwrap();
            assert_eq!(c.execute(&ctx).ok(), Some(want.clone()), "{src}");
            assert_eq!(c.program.execute(&ctx).ok(), Some(want), "{src} unmetered");
        }
    }

    #[test]
    fn an_evaluation_over_its_budget_fails_instead_of_running_on() {
        let ctx = crate::vars::root().new_inner_scope();
        // 100 × 100 iterations: 10,000 steps plus the calls in each.
        let l = list(100);
        let c = compiled(&format!("{l}.all(a, {l}.all(b, a + b >= 0))")).unwrap();
        assert!(matches!(c.execute(&ctx), Err(Failure::Budget)));
        // map copies its accumulator at each step: 200 elements cost ~20,000.
        let c = compiled(&format!("{}.map(x, x).size() > 0", list(200))).unwrap();
        assert!(matches!(c.execute(&ctx), Err(Failure::Budget)));
        // Small ones fit; without a message budget each evaluation has its own.
        let c = compiled(&format!("{l}.all(a, a >= 0)")).unwrap();
        for _ in 0..10 {
            assert_eq!(c.execute(&ctx).ok(), Some(Value::Bool(true)));
        }
        // Within one message's budget the evaluations add up.
        let _message = Budget::start(MAX_STEPS);
        let spent: usize = (0..100).take_while(|_| c.execute(&ctx).is_ok()).count();
        assert!((10..100).contains(&spent), "a message affords some, not all: {spent}");
        assert!(matches!(c.execute(&ctx), Err(Failure::Budget)), "and then nothing more");
    }
}
