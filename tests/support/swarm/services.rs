//! Services on the swarm: create, move by label, remove, and watch their
//! tasks (`docker service ps`, parsed by a pure function).

use super::{NODE_LABEL, Swarm};
use std::time::{Duration, Instant};

/// A task of a service as `docker service ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub node: String,
    pub desired: String,
    pub current: String,
    pub error: String,
}

/// Parses `docker service ps --format '{{.Node}}\t{{.DesiredState}}\t{{.CurrentState}}\t{{.Error}}'`.
pub fn parse_tasks(text: &str) -> Vec<Task> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split('\t').map(str::trim);
            let mut next = || f.next().unwrap_or("").to_owned();
            Task {
                node: next(),
                desired: next(),
                current: next(),
                error: next(),
            }
        })
        .collect()
}

impl Swarm {
    /// `docker service create` of `name` on node `on` (by its label), with
    /// `--network host` (no routing mesh here) and no registry lookup.
    /// `flags` go before the image (e.g. `--mount ...`), `cmd` after it.
    pub fn create_service(&self, name: &str, on: usize, flags: &[&str], image: &str, cmd: &[&str]) {
        let constraint = format!("node.labels.{NODE_LABEL}=={}", self.nodes[on - 1].name);
        let mut args = vec![
            "service",
            "create",
            "--detach",
            "--name",
            name,
            "--no-resolve-image",
            "--network",
            "host",
            "--constraint",
            &constraint,
        ];
        args.extend_from_slice(flags);
        args.push(image);
        args.extend_from_slice(cmd);
        self.manager().ok(&args);
    }

    /// Moves a service's placement from node `from` to node `to` by swapping
    /// its label constraint (what an operator does for a planned move).
    pub fn move_service(&self, name: &str, from: usize, to: usize) {
        let c = |n: usize| format!("node.labels.{NODE_LABEL}=={}", self.nodes[n - 1].name);
        self.manager().ok(&[
            "service",
            "update",
            "--detach",
            "--constraint-rm",
            &c(from),
            "--constraint-add",
            &c(to),
            name,
        ]);
    }

    pub fn remove_service(&self, name: &str) {
        self.manager().ok(&["service", "rm", name]);
    }

    /// The service's tasks, newest first.
    pub fn tasks(&self, name: &str) -> Vec<Task> {
        let out = self.manager().ok(&[
            "service",
            "ps",
            "--no-trunc",
            "--format",
            "{{.Node}}\t{{.DesiredState}}\t{{.CurrentState}}\t{{.Error}}",
            name,
        ]);
        parse_tasks(&out)
    }

    /// Waits until a task of `name` runs on node `n`; returns the id of its
    /// container there.
    pub fn wait_running(&self, name: &str, n: usize, limit: Duration) -> String {
        let node = &self.nodes[n - 1];
        let t = Instant::now();
        loop {
            let tasks = self.tasks(name);
            let running = tasks.iter().any(|t| {
                t.node == node.name && t.desired == "Running" && t.current.starts_with("Running")
            });
            if running {
                let id = node.docker().ok(&[
                    "ps",
                    "-q",
                    "--filter",
                    &format!("label=com.docker.swarm.service.name={name}"),
                ]);
                if let Some(id) = id.lines().next() {
                    return id.to_owned();
                }
            }
            assert!(
                t.elapsed() < limit,
                "service {name} not running on {} after {limit:?}: {tasks:?}",
                node.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ps_lines_parse() {
        let text = "swnode2\tRunning\tRunning 3 seconds ago\t\n\
                    swnode1\tShutdown\tShutdown 4 seconds ago\t\n\
                    swnode1\tRunning\tPending 2 seconds ago\t\"no suitable node\"\n";
        let t = parse_tasks(text);
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[0],
            Task {
                node: "swnode2".into(),
                desired: "Running".into(),
                current: "Running 3 seconds ago".into(),
                error: String::new(),
            }
        );
        assert_eq!(t[2].error, "\"no suitable node\"");
        assert!(parse_tasks("\n").is_empty());
    }
}
