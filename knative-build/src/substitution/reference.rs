//! Finding and parsing `$(...)` references in text (`specs/BUILD.md §1.4`).

use std::fmt;

/// How a reference picks from its value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// The whole value: `$(params.p)`.
    Whole,
    /// Every element of an array (or the whole object): `$(params.p[*])`.
    All,
    /// One element of an array: `$(params.p[1])`.
    Index(usize),
    /// One key of an object: `$(params.p.key)`.
    Key(String),
}

impl Selector {
    fn write_suffix(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Whole => Ok(()),
            Selector::All => f.write_str("[*]"),
            Selector::Index(i) => write!(f, "[{i}]"),
            Selector::Key(k) => write!(f, ".{k}"),
        }
    }
}

/// The `$(workspaces.<name>.<field>)` fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkspaceField {
    /// Where the workspace is mounted.
    Path,
    /// `true` when a run bound it, `false` for an unbound optional one.
    Bound,
    /// The bound claim's name, or empty.
    Claim,
    /// The volume's name.
    Volume,
}

impl WorkspaceField {
    /// The field's name in a reference.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceField::Path => "path",
            WorkspaceField::Bound => "bound",
            WorkspaceField::Claim => "claim",
            WorkspaceField::Volume => "volume",
        }
    }
}

/// The `$(context.*)` variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContextVar {
    /// `context.taskRun.name`
    TaskRunName,
    /// `context.taskRun.namespace`
    TaskRunNamespace,
    /// `context.taskRun.uid`
    TaskRunUid,
    /// `context.task.name`
    TaskName,
    /// `context.task.retry-count`
    TaskRetryCount,
    /// `context.pipelineRun.name`
    PipelineRunName,
    /// `context.pipelineRun.namespace`
    PipelineRunNamespace,
    /// `context.pipelineRun.uid`
    PipelineRunUid,
    /// `context.pipeline.name`
    PipelineName,
    /// `context.pipelineTask.retries`
    PipelineTaskRetries,
}

impl ContextVar {
    /// Every context variable.
    pub const ALL: [ContextVar; 10] = [
        ContextVar::TaskRunName,
        ContextVar::TaskRunNamespace,
        ContextVar::TaskRunUid,
        ContextVar::TaskName,
        ContextVar::TaskRetryCount,
        ContextVar::PipelineRunName,
        ContextVar::PipelineRunNamespace,
        ContextVar::PipelineRunUid,
        ContextVar::PipelineName,
        ContextVar::PipelineTaskRetries,
    ];

    /// The variable's path after `context.`.
    pub fn as_str(self) -> &'static str {
        match self {
            ContextVar::TaskRunName => "taskRun.name",
            ContextVar::TaskRunNamespace => "taskRun.namespace",
            ContextVar::TaskRunUid => "taskRun.uid",
            ContextVar::TaskName => "task.name",
            ContextVar::TaskRetryCount => "task.retry-count",
            ContextVar::PipelineRunName => "pipelineRun.name",
            ContextVar::PipelineRunNamespace => "pipelineRun.namespace",
            ContextVar::PipelineRunUid => "pipelineRun.uid",
            ContextVar::PipelineName => "pipeline.name",
            ContextVar::PipelineTaskRetries => "pipelineTask.retries",
        }
    }

    /// Whether a Task (rather than a Pipeline) provides the value.
    pub fn is_task_scope(self) -> bool {
        matches!(
            self,
            ContextVar::TaskRunName
                | ContextVar::TaskRunNamespace
                | ContextVar::TaskRunUid
                | ContextVar::TaskName
                | ContextVar::TaskRetryCount
        )
    }
}

/// A parsed `$(...)` reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reference {
    /// `$(params.<name>)`, `$(params["<name>"])`, with a selector.
    Param {
        /// The param's name.
        name: String,
        /// What is picked from its value.
        selector: Selector,
    },
    /// `$(tasks.<task>.results.<result>)`, with a selector.
    TaskResult {
        /// The pipeline task.
        task: String,
        /// The result's name.
        result: String,
        /// What is picked from its value.
        selector: Selector,
    },
    /// `$(finally.<task>.results.<result>)` (in Pipeline results only).
    FinallyResult {
        /// The finally task.
        task: String,
        /// The result's name.
        result: String,
        /// What is picked from its value.
        selector: Selector,
    },
    /// `$(tasks.<task>.status)`: `Succeeded`, `Failed` or `None` (finally only).
    TaskStatus {
        /// The pipeline task.
        task: String,
    },
    /// `$(tasks.<task>.reason)`: the TaskRun's reason (finally only).
    TaskReason {
        /// The pipeline task.
        task: String,
    },
    /// `$(tasks.status)`: `Succeeded`, `Failed`, `Completed` or `None` (finally only).
    TasksStatus,
    /// `$(tasks.<task>.matrix.length)`.
    MatrixLength {
        /// The pipeline task.
        task: String,
    },
    /// `$(results.<name>.path)`: the file a step writes a result to.
    ResultPath {
        /// The result's name.
        result: String,
    },
    /// `$(steps.step-<name>.exitCode.path)`: the file holding a step's exit code.
    StepExitCodePath {
        /// The step's name (without the `step-` prefix).
        step: String,
    },
    /// `$(workspaces.<name>.<field>)`.
    Workspace {
        /// The workspace's name.
        name: String,
        /// Which of its values.
        field: WorkspaceField,
    },
    /// `$(context.*)`.
    Context(ContextVar),
    /// `$(credentials.path)`: where credentials are initialized.
    CredentialsPath,
}

impl Reference {
    /// The pipeline task whose results or status this reads, if any.
    pub fn task(&self) -> Option<&str> {
        match self {
            Reference::TaskResult { task, .. }
            | Reference::TaskStatus { task }
            | Reference::TaskReason { task }
            | Reference::MatrixLength { task } => Some(task),
            _ => None,
        }
    }

    /// The selector, for references that have one.
    pub fn selector(&self) -> Option<&Selector> {
        match self {
            Reference::Param { selector, .. }
            | Reference::TaskResult { selector, .. }
            | Reference::FinallyResult { selector, .. } => Some(selector),
            _ => None,
        }
    }

    /// Whether a Pipeline (rather than a Task) provides the value.
    pub fn is_pipeline_scope(&self) -> bool {
        match self {
            Reference::Param { .. } => true,
            Reference::TaskResult { .. }
            | Reference::FinallyResult { .. }
            | Reference::TaskStatus { .. }
            | Reference::TaskReason { .. }
            | Reference::TasksStatus
            | Reference::MatrixLength { .. } => true,
            Reference::Workspace { field, .. } => *field == WorkspaceField::Bound,
            Reference::Context(var) => !var.is_task_scope(),
            Reference::ResultPath { .. }
            | Reference::StepExitCodePath { .. }
            | Reference::CredentialsPath => false,
        }
    }

    /// Whether a Task provides the value.
    pub fn is_task_scope(&self) -> bool {
        match self {
            Reference::Param { .. }
            | Reference::ResultPath { .. }
            | Reference::StepExitCodePath { .. }
            | Reference::Workspace { .. }
            | Reference::CredentialsPath => true,
            Reference::Context(var) => var.is_task_scope(),
            _ => false,
        }
    }

    /// Parses the text between `$(` and `)`.
    ///
    /// `Ok(None)` means the text is not a Tekton reference at all (it is
    /// left alone, like the shell's own `$(date)`); `Err` means it starts
    /// like one (`params.`, `tasks.`, …) but is malformed, with the reason.
    pub fn parse(expression: &str) -> Result<Option<Reference>, String> {
        let root_len = expression
            .find(|c: char| !is_name_char(c))
            .unwrap_or(expression.len());
        let root = &expression[..root_len];
        if !ROOTS.contains(&root) {
            return Ok(None);
        }
        let after = &expression[root_len..];
        if !(after.starts_with('.') || after.starts_with('[')) {
            return Ok(None);
        }
        let segments = segments(expression)?;
        interpret(&segments).map(Some)
    }
}

const ROOTS: [&str; 8] = [
    "params",
    "tasks",
    "finally",
    "results",
    "steps",
    "workspaces",
    "context",
    "credentials",
];

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// One part of a reference: a name (dotted or bracketed) or an index.
#[derive(Debug, PartialEq)]
enum Segment {
    Name(String),
    Star,
    Index(usize),
}

fn segments(expression: &str) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    let mut rest = expression;
    let mut expect_name = true;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[') {
            let (content, tail) = bracket(inner)?;
            out.push(content);
            rest = tail;
            expect_name = false;
        } else if let Some(tail) = rest.strip_prefix('.') {
            if expect_name {
                return Err("empty name before '.'".to_owned());
            }
            rest = tail;
            expect_name = true;
            if rest.is_empty() {
                return Err("ends with '.'".to_owned());
            }
        } else if expect_name {
            let len = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
            if len == 0 {
                return Err(format!(
                    "unexpected character {:?}",
                    rest.chars().next().unwrap_or(' ')
                ));
            }
            out.push(Segment::Name(rest[..len].to_owned()));
            rest = &rest[len..];
            expect_name = false;
        } else {
            return Err(format!(
                "unexpected character {:?} after a name",
                rest.chars().next().unwrap_or(' ')
            ));
        }
    }
    Ok(out)
}

/// Reads `*]`, `<digits>]`, `"name"]` or `'name']`.
fn bracket(inner: &str) -> Result<(Segment, &str), String> {
    if let Some(quote) = inner.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let body = &inner[1..];
        let end = body
            .find(quote)
            .ok_or_else(|| "unterminated quoted name".to_owned())?;
        let name = &body[..end];
        let tail = body[end + 1..]
            .strip_prefix(']')
            .ok_or_else(|| "expected ']' after a quoted name".to_owned())?;
        if name.is_empty() {
            return Err("empty quoted name".to_owned());
        }
        return Ok((Segment::Name(name.to_owned()), tail));
    }
    let end = inner
        .find(']')
        .ok_or_else(|| "unterminated '['".to_owned())?;
    let content = &inner[..end];
    let tail = &inner[end + 1..];
    if content == "*" {
        return Ok((Segment::Star, tail));
    }
    content
        .parse::<usize>()
        .map(|i| (Segment::Index(i), tail))
        .map_err(|_| {
            format!("expected '*', an index or a quoted name in brackets, got {content:?}")
        })
}

fn selector(rest: &[Segment]) -> Result<Selector, String> {
    match rest {
        [] => Ok(Selector::Whole),
        [Segment::Star] => Ok(Selector::All),
        [Segment::Index(i)] => Ok(Selector::Index(*i)),
        [Segment::Name(k)] => Ok(Selector::Key(k.clone())),
        _ => Err("expected at most one of [*], [<index>] or .<key> after the name".to_owned()),
    }
}

fn interpret(segs: &[Segment]) -> Result<Reference, String> {
    use Segment::Name;
    let name = |s: &str| Name(s.to_owned());
    match segs {
        [Name(root), Name(p), rest @ ..] if root == "params" => Ok(Reference::Param {
            name: p.clone(),
            selector: selector(rest)?,
        }),
        [Name(root), Name(s)] if root == "tasks" && s == "status" => Ok(Reference::TasksStatus),
        [Name(root), Name(t), Name(s)] if root == "tasks" && s == "status" => {
            Ok(Reference::TaskStatus { task: t.clone() })
        }
        [Name(root), Name(t), Name(s)] if root == "tasks" && s == "reason" => {
            Ok(Reference::TaskReason { task: t.clone() })
        }
        [Name(root), Name(t), m, l]
            if root == "tasks" && *m == name("matrix") && *l == name("length") =>
        {
            Ok(Reference::MatrixLength { task: t.clone() })
        }
        [Name(root), Name(t), r, Name(result), rest @ ..]
            if (root == "tasks" || root == "finally") && *r == name("results") =>
        {
            let selector = selector(rest)?;
            let (task, result) = (t.clone(), result.clone());
            Ok(if root == "tasks" {
                Reference::TaskResult {
                    task,
                    result,
                    selector,
                }
            } else {
                Reference::FinallyResult {
                    task,
                    result,
                    selector,
                }
            })
        }
        [Name(root), Name(result), p] if root == "results" && *p == name("path") => {
            Ok(Reference::ResultPath {
                result: result.clone(),
            })
        }
        [Name(root), Name(step), e, p]
            if root == "steps" && *e == name("exitCode") && *p == name("path") =>
        {
            step.strip_prefix("step-")
                .map(|s| Reference::StepExitCodePath { step: s.to_owned() })
                .ok_or_else(|| "step references name the step as `step-<name>`".to_owned())
        }
        [Name(root), Name(w), Name(field)] if root == "workspaces" => {
            let field = match field.as_str() {
                "path" => WorkspaceField::Path,
                "bound" => WorkspaceField::Bound,
                "claim" => WorkspaceField::Claim,
                "volume" => WorkspaceField::Volume,
                other => {
                    return Err(format!(
                        "unknown workspace field {other:?} (path, bound, claim or volume)"
                    ));
                }
            };
            Ok(Reference::Workspace {
                name: w.clone(),
                field,
            })
        }
        [Name(root), Name(object), Name(field)] if root == "context" => {
            let text = format!("{object}.{field}");
            ContextVar::ALL
                .into_iter()
                .find(|v| v.as_str() == text)
                .map(Reference::Context)
                .ok_or_else(|| format!("unknown context variable context.{text}"))
        }
        [Name(root), p] if root == "credentials" && *p == name("path") => {
            Ok(Reference::CredentialsPath)
        }
        [Name(root), ..] => Err(format!("not a valid `{root}` reference")),
        _ => Err("not a valid reference".to_owned()),
    }
}

impl fmt::Display for Reference {
    /// The reference in canonical form, without `$(` and `)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Param { name, selector } => {
                if name.contains('.') {
                    write!(f, "params[{name:?}]")?;
                } else {
                    write!(f, "params.{name}")?;
                }
                selector.write_suffix(f)
            }
            Reference::TaskResult {
                task,
                result,
                selector,
            } => {
                write!(f, "tasks.{task}.results.{result}")?;
                selector.write_suffix(f)
            }
            Reference::FinallyResult {
                task,
                result,
                selector,
            } => {
                write!(f, "finally.{task}.results.{result}")?;
                selector.write_suffix(f)
            }
            Reference::TaskStatus { task } => write!(f, "tasks.{task}.status"),
            Reference::TaskReason { task } => write!(f, "tasks.{task}.reason"),
            Reference::TasksStatus => f.write_str("tasks.status"),
            Reference::MatrixLength { task } => write!(f, "tasks.{task}.matrix.length"),
            Reference::ResultPath { result } => write!(f, "results.{result}.path"),
            Reference::StepExitCodePath { step } => write!(f, "steps.step-{step}.exitCode.path"),
            Reference::Workspace { name, field } => {
                write!(f, "workspaces.{name}.{}", field.as_str())
            }
            Reference::Context(var) => write!(f, "context.{}", var.as_str()),
            Reference::CredentialsPath => f.write_str("credentials.path"),
        }
    }
}

/// One `$(...)` reference found in a string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occurrence {
    /// Byte offset of `$(`.
    pub start: usize,
    /// Byte offset just after `)`.
    pub end: usize,
    /// The text between `$(` and `)`, as written.
    pub expression: String,
    /// The parsed reference, or why text that looks like one is malformed.
    pub reference: Result<Reference, String>,
}

impl Occurrence {
    /// Whether the reference is the whole string it was found in.
    pub fn is_whole(&self, text: &str) -> bool {
        self.start == 0 && self.end == text.len()
    }
}

/// Every Tekton reference in `text`, in order. Text that is not a Tekton
/// reference (the shell's `$(date)`, `$((1+2))`) is skipped, and references
/// nested in it (`$(echo $(params.x))`) are still found.
pub fn scan(text: &str) -> Vec<Occurrence> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find("$(") {
        let start = from + offset;
        let body = start + 2;
        if let Some(close) = closing_paren(&text[body..]) {
            let expression = &text[body..body + close];
            let end = body + close + 1;
            match Reference::parse(expression) {
                Ok(Some(reference)) => {
                    found.push(Occurrence {
                        start,
                        end,
                        expression: expression.to_owned(),
                        reference: Ok(reference),
                    });
                    from = end;
                    continue;
                }
                Err(reason) => {
                    found.push(Occurrence {
                        start,
                        end,
                        expression: expression.to_owned(),
                        reference: Err(reason),
                    });
                    from = end;
                    continue;
                }
                Ok(None) => {}
            }
        }
        from = body;
    }
    found
}

/// The offset of the `)` closing a reference body, skipping quoted text;
/// `None` when a `(` comes first (the text is not a reference).
fn closing_paren(body: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in body.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                ')' => return Some(i),
                '(' | '\n' => return None,
                _ => {}
            },
        }
    }
    None
}

/// Every well-formed reference in `text`.
pub fn references(text: &str) -> Vec<Reference> {
    scan(text)
        .into_iter()
        .filter_map(|o| o.reference.ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Reference {
        let found = scan(text);
        assert_eq!(found.len(), 1, "{text}: {found:?}");
        found[0].reference.clone().expect("valid test input")
    }

    #[test]
    fn param_forms() {
        let p = |name: &str, selector| Reference::Param {
            name: name.into(),
            selector,
        };
        assert_eq!(one("$(params.x)"), p("x", Selector::Whole));
        assert_eq!(one("$(params[\"a.b\"])"), p("a.b", Selector::Whole));
        assert_eq!(one("$(params['a.b'])"), p("a.b", Selector::Whole));
        assert_eq!(one("$(params.arr[*])"), p("arr", Selector::All));
        assert_eq!(one("$(params.arr[3])"), p("arr", Selector::Index(3)));
        assert_eq!(
            one("$(params.obj.key)"),
            p("obj", Selector::Key("key".into()))
        );
        assert_eq!(one("$(params['obj'][*])"), p("obj", Selector::All));
    }

    #[test]
    fn task_and_context_forms() {
        assert_eq!(
            one("$(tasks.build.results.IMAGE_DIGEST)"),
            Reference::TaskResult {
                task: "build".into(),
                result: "IMAGE_DIGEST".into(),
                selector: Selector::Whole
            }
        );
        assert_eq!(one("$(tasks.status)"), Reference::TasksStatus);
        assert_eq!(
            one("$(tasks.t.status)"),
            Reference::TaskStatus { task: "t".into() }
        );
        assert_eq!(
            one("$(context.task.retry-count)"),
            Reference::Context(ContextVar::TaskRetryCount)
        );
        assert_eq!(
            one("$(steps.step-unit.exitCode.path)"),
            Reference::StepExitCodePath {
                step: "unit".into()
            }
        );
        assert_eq!(
            one("$(workspaces.src.bound)"),
            Reference::Workspace {
                name: "src".into(),
                field: WorkspaceField::Bound
            }
        );
    }

    #[test]
    fn shell_substitutions_are_left_alone_but_nested_references_are_found() {
        assert!(scan("echo $(date) $((1+2)) $(cat 'x)')").is_empty());
        let found = scan("echo $(echo $(params.x)) done");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].expression, "params.x");
        assert_eq!(
            &"echo $(echo $(params.x)) done"[found[0].start..found[0].end],
            "$(params.x)"
        );
    }

    #[test]
    fn malformed_references_of_known_roots_are_errors() {
        let found = scan("$(context.taskRun.nope) $(params.a[x])");
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|o| o.reference.is_err()));
    }

    #[test]
    fn display_is_canonical() {
        for text in [
            "params.x",
            "params.arr[*]",
            "params.o.k",
            "tasks.a.results.r[0]",
            "finally.f.results.r",
            "results.r.path",
            "context.pipelineRun.uid",
        ] {
            assert_eq!(one(&format!("$({text})")).to_string(), text);
        }
    }
}
