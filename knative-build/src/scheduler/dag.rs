//! The graph of a Pipeline's `tasks` (`specs/BUILD.md §1.7`): an edge
//! from A to B when B has A in `runAfter` or reads A's results in its
//! params, `when` or matrix. Finally tasks are not in it.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::PipelineSpec;
use crate::substitution::result_dependencies;

/// Why a Pipeline's tasks do not form a graph that can run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    /// The tasks depend on each other in a circle, named in order with the
    /// first task repeated at the end (`a -> b -> c -> a`).
    #[error("the tasks form a cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

/// The DAG of a Pipeline's `tasks`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dag {
    order: Vec<String>,
    parents: BTreeMap<String, BTreeSet<String>>,
    result_parents: BTreeMap<String, BTreeSet<String>>,
}

impl Dag {
    /// Builds the graph of `spec.tasks`. Edges to tasks that are not in
    /// `spec.tasks` (and a task naming itself) are ignored: validation
    /// reports those.
    pub fn build(spec: &PipelineSpec) -> Result<Dag, DagError> {
        let names: Vec<String> = spec.tasks.iter().map(|t| t.name.clone()).collect();
        let known: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let mut parents: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut result_parents: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for task in &spec.tasks {
            let from_results: BTreeSet<String> = result_dependencies(task)
                .into_iter()
                .filter(|p| known.contains(p.as_str()) && *p != task.name)
                .collect();
            let mut all: BTreeSet<String> = task
                .run_after
                .iter()
                .filter(|p| known.contains(p.as_str()) && **p != task.name)
                .cloned()
                .collect();
            all.extend(from_results.iter().cloned());
            parents.entry(task.name.clone()).or_default().extend(all);
            result_parents
                .entry(task.name.clone())
                .or_default()
                .extend(from_results);
        }
        let mut children: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (child, ps) in &parents {
            for p in ps {
                children
                    .entry(p.as_str())
                    .or_default()
                    .insert(child.as_str());
            }
        }
        if let Some(cycle) = find_cycle(&names, &children) {
            return Err(DagError::Cycle(cycle));
        }
        let order = topological_order(&names, &parents, &children);
        Ok(Dag {
            order,
            parents,
            result_parents,
        })
    }

    /// The tasks, each after all its parents; ties keep the spec's order.
    pub fn order(&self) -> &[String] {
        &self.order
    }

    /// The tasks `task` waits for (`runAfter` and result producers).
    pub fn parents(&self, task: &str) -> impl Iterator<Item = &str> {
        self.parents
            .get(task)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// The tasks whose results `task` reads.
    pub fn result_parents(&self, task: &str) -> impl Iterator<Item = &str> {
        self.result_parents
            .get(task)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// The tasks that wait for nothing.
    pub fn roots(&self) -> impl Iterator<Item = &str> {
        self.order
            .iter()
            .filter(|t| self.parents(t).next().is_none())
            .map(String::as_str)
    }
}

/// Depth-first search for a back edge; returns the cycle it closes.
fn find_cycle(names: &[String], children: &BTreeMap<&str, BTreeSet<&str>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unseen,
        OnPath,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> =
        names.iter().map(|n| (n.as_str(), Mark::Unseen)).collect();
    for root in names {
        if marks.get(root.as_str()) != Some(&Mark::Unseen) {
            continue;
        }
        // An explicit stack of (node, its children still to visit) keeps
        // deep graphs off the call stack.
        let mut path: Vec<&str> = vec![root.as_str()];
        let mut pending: Vec<Vec<&str>> = vec![next_children(children, root)];
        marks.insert(root.as_str(), Mark::OnPath);
        while let Some(todo) = pending.last_mut() {
            match todo.pop() {
                Some(child) => match marks.get(child).copied().unwrap_or(Mark::Done) {
                    Mark::OnPath => {
                        let start = path.iter().position(|n| *n == child).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            path[start..].iter().map(|n| (*n).to_owned()).collect();
                        cycle.push(child.to_owned());
                        return Some(cycle);
                    }
                    Mark::Unseen => {
                        marks.insert(child, Mark::OnPath);
                        path.push(child);
                        pending.push(next_children(children, child));
                    }
                    Mark::Done => {}
                },
                None => {
                    pending.pop();
                    if let Some(done) = path.pop() {
                        marks.insert(done, Mark::Done);
                    }
                }
            }
        }
    }
    None
}

/// Children in reverse name order, so that popping visits them in order.
fn next_children<'a>(children: &BTreeMap<&str, BTreeSet<&'a str>>, node: &str) -> Vec<&'a str> {
    children
        .get(node)
        .map(|c| c.iter().rev().copied().collect())
        .unwrap_or_default()
}

/// Kahn's algorithm, always taking the earliest ready task in spec order.
fn topological_order(
    names: &[String],
    parents: &BTreeMap<String, BTreeSet<String>>,
    children: &BTreeMap<&str, BTreeSet<&str>>,
) -> Vec<String> {
    let position: BTreeMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut waiting: BTreeMap<&str, usize> = names
        .iter()
        .map(|n| (n.as_str(), parents.get(n).map_or(0, BTreeSet::len)))
        .collect();
    let mut ready: BTreeSet<(usize, &str)> = waiting
        .iter()
        .filter(|(_, w)| **w == 0)
        .filter_map(|(n, _)| position.get(n).map(|p| (*p, *n)))
        .collect();
    let mut order = Vec::with_capacity(names.len());
    while let Some((p, name)) = ready.iter().next().copied() {
        ready.remove(&(p, name));
        order.push(name.to_owned());
        for child in children.get(name).into_iter().flatten() {
            if let Some(w) = waiting.get_mut(child) {
                *w = w.saturating_sub(1);
                if *w == 0
                    && let Some(cp) = position.get(child)
                {
                    ready.insert((*cp, child));
                }
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Param, PipelineTask};

    fn task(name: &str, after: &[&str]) -> PipelineTask {
        PipelineTask {
            run_after: after.iter().map(|a| (*a).to_owned()).collect(),
            ..PipelineTask::referring(name, "t")
        }
    }

    #[test]
    fn result_references_are_edges() {
        let mut b = task("b", &[]);
        b.params = vec![Param::new("digest", "$(tasks.a.results.IMAGE_DIGEST)")];
        let spec = PipelineSpec {
            tasks: vec![b, task("a", &[]), task("c", &["b"])],
            ..PipelineSpec::default()
        };
        let dag = Dag::build(&spec).expect("valid test input");
        assert_eq!(dag.order(), ["a", "b", "c"]);
        assert_eq!(dag.parents("b").collect::<Vec<_>>(), ["a"]);
        assert_eq!(dag.result_parents("b").collect::<Vec<_>>(), ["a"]);
        assert_eq!(dag.result_parents("c").count(), 0);
        assert_eq!(dag.roots().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn a_cycle_is_named_in_order() {
        let mut a = task("a", &["c"]);
        a.when = vec![crate::api::WhenExpression::is_in(
            "$(tasks.c.results.ok)",
            &["true"],
        )];
        let spec = PipelineSpec {
            tasks: vec![a, task("b", &["a"]), task("c", &["b"]), task("d", &[])],
            ..PipelineSpec::default()
        };
        let err = Dag::build(&spec).expect_err("must be rejected");
        assert_eq!(err.to_string(), "the tasks form a cycle: a -> b -> c -> a");
    }
}
