//! Follow the clients, end to end (issue 15): three Swarm nodes labelled
//! with three regions, three client hosts placed in those regions by a
//! small test `.mmdb`, and a counter service on a daffe volume.
//!
//! A load generator per client replays a compressed circadian day (24 h in
//! `DAY_S` seconds: each region busiest in its local evening) against the
//! service, at the address `daffe placement where` gives (re-read every few
//! seconds, as a client's DNS cache would), retrying a failed GET once.
//! The service writes an access log; `daffe placement observe --follow`
//! turns it into rates per region; `daffe follow` on node 1 decides and
//! moves the service by its region constraint (Swarm moves the task,
//! cluster mode the volume), and every node runs the forwarding watch, so
//! the old address keeps answering after a move.
//!
//! Checked: the service moved; each client's counts only go up and the
//! final count covers every answered request (no increment lost in a
//! move); no request failed after its one retry; requests reached the new
//! node through the old address; and the latency the run achieved, by the
//! same model (`placement`'s RTT table), is within 10% of what `daffe
//! placement simulate` predicts for the same scenario.
//!
//! Time runs 576x faster for the clients and the rule (`--clock log`): a
//! move's real downtime (~5 s) is ~48 min of the day, which the move model
//! says (`--restart`), and a failed request's penalty is scaled down by the
//! same factor (each request here stands for 576 of a real day's).

use daffe_e2e::plugin::daffe_bin;
use daffe_e2e::swarm::{self, Client, Lease, node_addr};
use placement::latency::pair_mean_ms;
use placement::rtt::RttTable;
use placement::testing::mmdb::{MmdbWriter, Value};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The compressed day, in real seconds (the whole test stays near 4 min).
const DAY_S: f64 = 150.0;
/// Mean requests per second per client region (real time); the diurnal
/// curve takes each between 0.4x and 1.6x of it.
const BASE_RPS: f64 = 2.0;
const PORT: u16 = 8080;
const SERVICE: &str = "counter";
/// Node n's region, client n's region and UTC offset.
const REGIONS: [(&str, f64); 3] = [
    ("us-east-1", -5.0),
    ("eu-west-1", 0.0),
    ("ap-northeast-1", 9.0),
];

fn compress() -> f64 {
    86_400.0 / DAY_S
}

/// The CGI: one increment under a mkdir lock (busybox has no flock; the
/// entrypoint clears a lock a killed request left), an access-log line with
/// the client's address and the request's (compressed) time, the count and
/// the node that answered.
const COUNT_CGI: &str = r#"#!/bin/sh
t=${QUERY_STRING#t=}
until mkdir /data/lk 2>/dev/null; do usleep 1000; done
n=$(cat /data/count 2>/dev/null)
n=$(( ${n:-0} + 1 ))
echo $n > /data/count.new && mv /data/count.new /data/count
rmdir /data/lk
echo "{\"remote_addr\":\"$REMOTE_ADDR\",\"t\":$t}" >> /logs/access.log
printf 'Content-Type: text/plain\r\n\r\n%s %s\n' "$n" "$NODE"
"#;

/// One client region's load: sequential GETs at the diurnal rate, the
/// address re-read every `ttl` s, one retry (same address) after 1 s; one
/// JSON line per request.
const LOADGEN: &str = r#"
import json, math, sys, time, urllib.request
region, tz, base, v0, t0, day, addr_file, out, ttl = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), sys.argv[7], sys.argv[8], float(sys.argv[9])
k = 86400.0 / day
cache = {"addr": None, "at": -1e9}
def current():
    now = time.time()
    if cache["addr"] is None or now - cache["at"] >= ttl:
        try:
            with open(addr_file) as f:
                a = f.read().strip()
            if a:
                cache["addr"] = a
        except OSError:
            pass
        cache["at"] = now
    return cache["addr"]
def get(a, v):
    with urllib.request.urlopen("http://%s/cgi-bin/count?t=%d" % (a, int(v)), timeout=40) as r:
        body = r.read().decode().split()
    return int(body[0]), body[1]
with open(out, "w") as o:
    while True:
        now = time.time()
        el = now - t0
        if el >= day:
            break
        v = v0 + el * k
        local_h = (v / 3600.0 + tz) % 24
        rate = base * (1 + 0.6 * math.cos(2 * math.pi * (local_h - 20) / 24))
        rec = {"region": region, "real": el, "t": v}
        a = current()
        for attempt in (1, 2):
            rec["addr"], rec["attempts"] = a, attempt
            try:
                n, node = get(a, v)
                rec.update(ok=True, count=n, node=node)
                rec.pop("error", None)
                break
            except Exception as e:
                rec.update(ok=False, error=repr(e))
                if attempt == 1:
                    time.sleep(1.0)
        rec["took"] = time.time() - now
        o.write(json.dumps(rec) + "\n")
        o.flush()
        time.sleep(max(0.0, now + 1.0 / rate - time.time()))
"#;

/// Processes the test starts outside the swarm's nodes, stopped on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
        }
        for c in &mut self.0 {
            let t = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if t.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn client_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, u8::try_from(10 + k).unwrap())
}

/// Client k's address is in region k (an operator's own `cloud_region`).
fn write_mmdb(path: &Path) {
    let mut w = MmdbWriter::new("daffe-follow-e2e");
    for (k, (region, _)) in REGIONS.iter().enumerate() {
        w.insert(
            format!("{}/32", client_addr(k + 1)).parse().unwrap(),
            Value::map([("cloud_region", Value::Str((*region).into()))]),
        );
    }
    std::fs::write(path, w.to_bytes()).unwrap();
}

/// The scenario `placement simulate` runs for the same day: the same
/// regions, curve, rate, move model and rule settings.
fn scenario(rule: &str) -> String {
    let mut s = format!(
        "name = \"follow e2e\"\n\
         description = \"three regions, one client host each, the e2e's compressed day\"\n\
         days = 1\nwarmup_days = 0\n\
         mean_rps = {mean}\namplitude = 0.6\npeak_hour = 20\nseed = 1\n\
         sites = [\"us-east-1\", \"eu-west-1\", \"ap-northeast-1\"]\n\
         start = \"us-east-1\"\ndecide_every_s = {every}\n",
        mean = 3.0 * BASE_RPS / compress(),
        every = compress(),
    );
    for (r, tz) in REGIONS {
        s.push_str(&format!(
            "[[region]]\nname = \"{r}\"\nweight = 1.0\nutc_offset_h = {tz}\n"
        ));
    }
    s.push_str(&format!(
        "[moves]\nvolume_gib = 0.0078125\ndirty_mib_per_s = 0.0\nthroughput_mib_per_s = 10.0\n\
         overhead_s = 0.5\nrestart_s = {restart}\nmax_downtime_s = 2.0\n\
         [demand]\nhalf_life_s = 3600.0\nalpha = 0.5\nfade_s = 10800.0\n\
         [rule]\n{rule}",
        restart = 5.0 * compress(),
    ));
    s
}

/// `daffe placement where` every second; the address (of a running task
/// only: a task still starting does not answer yet) goes to `file`, as a
/// DNS updater would publish it.
fn updater(socket: PathBuf, file: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let out = Command::new(daffe_bin())
                .args(["placement", "where", SERVICE, "--json", "--engine"])
                .arg(&socket)
                .output()
                .unwrap();
            if let Ok(v) = serde_json::from_slice::<Json>(&out.stdout)
                && v["state"] == "running"
                && let Some(a) = v["addr"].as_str()
            {
                let tmp = file.with_extension("tmp");
                std::fs::write(&tmp, format!("{a}:{PORT}")).unwrap();
                std::fs::rename(&tmp, &file).unwrap();
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    })
}

fn json_lines(text: &str) -> Vec<Json> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn follow_moves_the_counter_to_its_clients_and_the_old_address_keeps_answering() {
    let mut s = swarm::shared();
    for n in 1..=3 {
        s.start_daffe(n, Lease::default());
    }
    let m = s.manager();
    for (n, (region, _)) in REGIONS.iter().enumerate() {
        m.ok(&[
            "node",
            "update",
            "--label-add",
            &format!("region={region}"),
            &s.nodes[n].name,
        ]);
    }
    let clients: Vec<Client> = (1..=3).map(|k| s.add_client(k, client_addr(k))).collect();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = dir.path();
    let www = d.join("www/cgi-bin");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("count"), COUNT_CGI).unwrap();
    Command::new("chmod")
        .args(["-R", "a+rx"])
        .arg(d)
        .status()
        .unwrap();
    let logs = d.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("access.log"), "").unwrap();
    let mmdb = d.join("clients.mmdb");
    write_mmdb(&mmdb);
    let rule = format!("penalty_s = {}\n", 10.0 / compress());
    std::fs::write(d.join("rule.toml"), &rule).unwrap();
    std::fs::write(d.join("scenario.toml"), scenario(&rule)).unwrap();
    let pdir = d.join("placement");

    m.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        SERVICE,
        "--no-resolve-image",
        "--network",
        "host",
        "--constraint",
        "node.labels.region==us-east-1",
        "--env",
        "NODE={{.Node.Hostname}}",
        "--stop-grace-period",
        "2s",
        "--mount",
        "type=volume,source=ctr,target=/data,volume-driver=daffe,volume-nocopy=true",
        "--mount",
        &format!(
            "type=bind,source={},target=/www,readonly",
            d.join("www").display()
        ),
        "--mount",
        &format!("type=bind,source={},target=/logs", logs.display()),
        &daffe_e2e::docker::test_image(),
        "sh",
        "-c",
        "rmdir /data/lk 2>/dev/null; exec httpd -f -p 8080 -h /www",
    ]);
    s.wait_running(SERVICE, 1, Duration::from_secs(60));
    let addr_file = d.join("addr");
    std::fs::write(&addr_file, format!("{}:{PORT}", node_addr(1))).unwrap();
    // The service answers a client before the day starts (httpd up).
    let t = Instant::now();
    loop {
        let out = clients[0]
            .command("curl")
            .args(["-sf", "-m", "5"])
            .arg(format!("http://{}:{PORT}/cgi-bin/count?t=0", node_addr(1)))
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "counter not answering: {out:?}\ntasks: {:?}",
            s.tasks(SERVICE)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // That warm-up request's line (time 0) is no part of the day.
    std::fs::write(logs.join("access.log"), "").unwrap();

    let mut procs = Procs(Vec::new());
    let observe_log = std::fs::File::create(d.join("observe.log")).unwrap();
    procs.0.push(
        Command::new(daffe_bin())
            .args(["placement", "observe", "--follow", "--service", SERVICE])
            .arg("--log")
            .arg(logs.join("access.log"))
            .args([
                "--format",
                "json",
                "--ip-field",
                "remote_addr",
                "--time-field",
                "t",
            ])
            .arg("--mmdb")
            .arg(&mmdb)
            .arg("--placement-dir")
            .arg(&pdir)
            .args(["--poll", "200ms", "--save-every", "1s", "--half-life", "1h"])
            .stdout(observe_log.try_clone().unwrap())
            .stderr(observe_log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The mover on node 1; the forwarding watch on every node.
    for n in 1..=3 {
        let socket = s.nodes[n - 1].socket.clone();
        let name = s.nodes[n - 1].name.clone();
        let mut cmd = s.nodes[n - 1].enter(daffe_bin());
        cmd.args(["follow", SERVICE, "--json", "--engine"])
            .arg(&socket)
            .args(["--node", &name, "--forward-port", &PORT.to_string()])
            .args(["--grace", "30s", "--hold", "30s", "--watch", "200ms"])
            .arg("--placement-dir")
            .arg(&pdir);
        if n == 1 {
            cmd.args(["--clock", "log", "--interval", "1s"])
                .args(["--volume-size", "8M", "--throughput", "10M"])
                .args(["--restart", &format!("{}s", 5.0 * compress())])
                .arg("--rule")
                .arg(d.join("rule.toml"));
        } else {
            cmd.arg("--forward-only");
        }
        s.nodes[n - 1].spawn("follow", cmd);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let upd = updater(s.nodes[0].socket.clone(), addr_file.clone(), stop.clone());

    // The day: v0 is yesterday's midnight (UTC), t0 now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let v0 = (now / 86_400.0).floor() * 86_400.0 - 86_400.0;
    let script = d.join("loadgen.py");
    std::fs::write(&script, LOADGEN).unwrap();
    let mut gens = Vec::new();
    for (k, c) in clients.iter().enumerate() {
        let (region, tz) = REGIONS[k];
        let mut cmd = c.command("python3");
        cmd.arg(&script)
            .args([
                region,
                &tz.to_string(),
                &BASE_RPS.to_string(),
                &v0.to_string(),
                &now.to_string(),
                &DAY_S.to_string(),
            ])
            .arg(&addr_file)
            .arg(d.join(format!("load-{region}.jsonl")))
            .arg("3")
            .stdin(Stdio::null());
        gens.push(cmd.spawn().unwrap());
    }
    for g in &mut gens {
        let st = g.wait().unwrap();
        assert!(st.success(), "load generator: {st}");
    }
    stop.store(true, Ordering::Relaxed);
    upd.join().unwrap();
    drop(procs);
    for n in 1..=3 {
        s.nodes[n - 1].stop("follow");
    }

    // What the clients saw.
    let mut reqs = Vec::new();
    for (r, _) in REGIONS {
        reqs.extend(json_lines(
            &std::fs::read_to_string(d.join(format!("load-{r}.jsonl"))).unwrap(),
        ));
    }
    let follow1 = json_lines(&s.nodes[0].log("follow"));
    let moves: Vec<&Json> = follow1.iter().filter(|l| l["outcome"] == "moved").collect();
    let forwards: Vec<Json> = (0..3)
        .flat_map(|n| json_lines(&s.nodes[n].log("follow")))
        .filter(|l| l["forward"].is_string())
        .collect();
    let ok: Vec<&Json> = reqs.iter().filter(|r| r["ok"] == true).collect();
    let failed: Vec<&Json> = reqs.iter().filter(|r| r["ok"] != true).collect();
    let retried = reqs.iter().filter(|r| r["attempts"] == 2).count();
    let node_region: BTreeMap<String, &str> = (0..3)
        .map(|n| (s.nodes[n].name.clone(), REGIONS[n].0))
        .collect();
    let node_addr_of: BTreeMap<String, String> = (0..3)
        .map(|n| {
            (
                s.nodes[n].name.clone(),
                format!("{}:{PORT}", node_addr(n + 1)),
            )
        })
        .collect();
    let via_old = ok
        .iter()
        .filter(|r| {
            r["addr"].as_str()
                != node_addr_of
                    .get(r["node"].as_str().unwrap_or(""))
                    .map(String::as_str)
        })
        .count();
    let slowest = ok
        .iter()
        .map(|r| r["took"].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max);

    // The model's latency for what was served: client region to the
    // region of the node that answered (as the simulator scores it).
    let table = RttTable::builtin().unwrap();
    let lat: Vec<f64> = ok
        .iter()
        .map(|r| {
            let c = table.index(r["region"].as_str().unwrap()).unwrap();
            let site = node_region[r["node"].as_str().unwrap()];
            pair_mean_ms(table.get(c, table.index(site).unwrap()), 0.0)
        })
        .collect();
    let run_mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    let sim = Command::new(daffe_bin())
        .args(["placement", "simulate", "--json", "--scenario"])
        .arg(d.join("scenario.toml"))
        .arg("--out")
        .arg(d.join("plots"))
        .output()
        .unwrap();
    assert!(sim.status.success(), "simulate: {sim:?}");
    let sim: Json = serde_json::from_slice(&sim.stdout).unwrap();
    let policy = |name: &str| {
        sim["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["policy"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no policy {name} in {sim}"))
    };
    let daffe = policy("daffe");
    let sim_mean = daffe["mean_ms"].as_f64().unwrap();
    let stat = policy("static");
    let summary = format!(
        "follow e2e: {} requests ({} ok, {} failed after one retry, {} retried, {} via the old address), slowest {:.1} s; \
         {} moves ({}); forwarders: {}; modelled mean {:.1} ms vs simulate's daffe {:.1} ms (x{:.3}; {} moves), static {:.1} ms",
        reqs.len(),
        ok.len(),
        failed.len(),
        retried,
        via_old,
        slowest,
        moves.len(),
        moves
            .iter()
            .map(|m| format!(
                "{}->{} at {:.1} h in {:.1} s",
                m["current"],
                m["moved"]["to"]["region"],
                (m["at"].as_f64().unwrap_or(0.0) - v0) / 3600.0,
                m["moved"]["took_s"].as_f64().unwrap_or(0.0)
            ))
            .collect::<Vec<_>>()
            .join(", "),
        forwards
            .iter()
            .map(Json::to_string)
            .collect::<Vec<_>>()
            .join(" "),
        run_mean,
        sim_mean,
        run_mean / sim_mean,
        daffe["moves"],
        stat["mean_ms"].as_f64().unwrap_or(0.0),
    );
    eprintln!("{summary}");

    // The count never goes backwards: each client's answers only go up,
    // and the last count covers every answered request.
    for (r, _) in REGIONS {
        let mut last = 0;
        for q in ok.iter().filter(|q| q["region"] == r) {
            let n = q["count"].as_u64().unwrap();
            assert!(n > last, "{r}: count {n} after {last}\n{summary}");
            last = n;
        }
    }
    let max = ok
        .iter()
        .filter_map(|q| q["count"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(
        max >= u64::try_from(ok.len()).unwrap(),
        "increments lost: highest count {max} for {} answered requests\n{summary}",
        ok.len()
    );
    assert!(
        reqs.len() as f64 >= 0.6 * 3.0 * BASE_RPS * DAY_S,
        "too few requests\n{summary}"
    );
    assert!(
        !moves.is_empty(),
        "follow never moved the service\n{summary}\n{}",
        s.nodes[0].log("follow")
    );
    assert!(failed.is_empty(), "requests failed: {failed:?}\n{summary}");
    assert!(
        via_old > 0,
        "no request reached the new node through the old address\n{summary}"
    );
    assert!(
        (run_mean / sim_mean - 1.0).abs() <= 0.10,
        "modelled latency off the simulator's by more than 10%\n{summary}"
    );
    drop(clients);
    s.reset();
}
