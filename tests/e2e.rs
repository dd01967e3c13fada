//! The end-to-end tests, one binary (as ripgrep does): each module below is
//! one file of this folder and was a binary of its own. Linking one test
//! binary instead of eighteen is most of an incremental test build.
//!
//! The tests of all modules now share a process and run on parallel threads,
//! so none may change process-wide state (environment, umask, rlimits, signal
//! dispositions, the working directory) or assume it is alone: each starts
//! its own plugin, engine, moto, namespaces or swarm under unique names
//! (`daffe_e2e::unique`), and the one shared swarm is handed out under a lock
//! (`daffe_e2e::swarm::shared`).

mod bad_names;
mod block_volumes;
mod cluster_bench;
mod cluster_swarm;
mod compose;
mod concurrency;
mod deb_package;
mod dir_quota;
mod ebs_migrate;
mod ebs_snapshot;
mod ebs_volumes;
mod flocker_profiles;
mod follow_hosts;
mod follow_swarm;
mod hardening;
mod hardening_control;
mod hardening_lost_commit;
mod hardening_mounts;
mod hardening_plugin_torture;
mod hardening_torture;
mod managed_plugin;
mod migrate;
mod migrate_block;
mod migrate_connect;
mod migrate_live;
mod migrate_postgres;
mod netns_harness;
mod operator_exit_codes;
mod operator_metrics;
mod operator_metrics_moves;
mod operator_migrate_progress;
mod operator_progress;
mod operator_status;
mod operator_sync;
mod operator_volume_ls;
mod postgres_harness;
mod profiles_endpoint;
mod restarts;
mod sharing;
mod swarm_harness;
