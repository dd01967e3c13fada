//! A moto server for one test: started on a free 127.0.0.1 port from
//! `DAFFE_MOTO_SERVER` (default /var/tmp/daffe-venv/bin/moto_server), reset
//! before use, killed on drop. A missing moto fails the test: it never skips.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEFAULT_MOTO: &str = "/var/tmp/daffe-venv/bin/moto_server";
/// moto imports all its services at start; on a busy 2-core machine that can take a while.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    pub port: u16,
    pub url: String,
}

/// The moto executable this run uses.
pub fn moto_server_path() -> PathBuf {
    std::env::var_os("DAFFE_MOTO_SERVER").map_or_else(|| PathBuf::from(DEFAULT_MOTO), PathBuf::from)
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port on 127.0.0.1");
    l.local_addr().expect("local addr").port()
}

/// Sends one small HTTP request and returns the status code.
pub fn http_status(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad reply: {head:.80}")))
}

impl Moto {
    /// Starts a server and waits until it answers; panics (fails the test) if
    /// moto is missing or does not come up.
    pub fn start() -> Moto {
        let path = moto_server_path();
        assert!(
            path.exists(),
            "moto_server not found at {} (set DAFFE_MOTO_SERVER; tests/run-all.sh installs it)",
            path.display()
        );
        let mut last_err = String::new();
        // A port picked free can be taken before moto binds it: try a few.
        for _ in 0..3 {
            let port = free_port();
            let mut child = Command::new(&path)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_err = format!("moto exited with {status}");
                    break;
                }
                match http_status(port, "POST", "/moto-api/reset") {
                    Ok(200) => {
                        return Moto {
                            child,
                            port,
                            url: format!("http://127.0.0.1:{port}"),
                        };
                    }
                    Ok(code) => last_err = format!("reset answered {code}"),
                    Err(e) => last_err = e.to_string(),
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("moto did not start: {last_err}");
    }

    /// Wipes all state.
    pub fn reset(&self) {
        let code = http_status(self.port, "POST", "/moto-api/reset").expect("reset moto");
        assert_eq!(code, 200, "moto reset");
    }

    /// Calls the EC2 Query API directly (what the test itself needs from
    /// moto: instances to attach to, the volumes as EC2 sees them) and
    /// returns the XML reply. moto routes by the credential scope of the
    /// Authorization header and does not check the signature.
    pub fn ec2(&self, action: &str, params: &[(&str, &str)]) -> String {
        let mut body = format!("Action={action}&Version=2016-11-15");
        for (k, v) in params {
            body.push_str(&format!("&{k}={v}"));
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}",
            port = self.port,
            len = body.len(),
        )
        .expect("write to moto");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("read moto's reply");
        let (head, xml) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
        assert!(head.contains(" 200 "), "moto {action}: {head}\n{xml}");
        xml.to_owned()
    }

    /// Starts a moto instance in `zone`; returns (instance id, zone): the
    /// "host" an EBS-backed plugin attaches volumes to.
    pub fn run_instance(&self, zone: &str) -> (String, String) {
        let xml = self.ec2(
            "RunInstances",
            &[
                ("ImageId", "ami-12c6146b"),
                ("MinCount", "1"),
                ("MaxCount", "1"),
                ("Placement.AvailabilityZone", zone),
            ],
        );
        (
            xml_value(&xml, "instanceId"),
            xml_value(&xml, "availabilityZone"),
        )
    }

    /// A `daffe serve` config on the EBS backend for `instance` in `zone`,
    /// pointing at this server, with loop devices standing in for NVMe.
    pub fn ebs_config(&self, instance: &str, zone: &str) -> String {
        format!(
            r#"
backend = "ebs"
[aws]
region = "us-east-1"
endpoint_url = "{url}"
instance_id = "{instance}"
availability_zone = "{zone}"
device_resolver = "loop"
"#,
            url = self.url
        )
    }

    /// Environment for an AWS client talking to this server: dummy
    /// credentials, a region, no instance metadata lookups.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of every `<tag>...</tag>` in `xml`, in order (moto's replies are
/// flat enough that this beats pulling in an XML parser for tests).
pub fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(rest[..j].to_owned());
        rest = &rest[j + close.len()..];
    }
    out
}

/// The first `<tag>` in `xml`; fails the test if there is none.
pub fn xml_value(xml: &str, tag: &str) -> String {
    xml_values(xml, tag)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
}
