//! Black-box test of `twinroute inject-webhook`: the real binary serving TLS with a freshly
//! generated certificate, called with curl the way the API server calls it (POST /mutate with
//! an AdmissionReview, CA-verified TLS). Needs `openssl` and `curl` (scripts/setup.sh).

use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_string(), code.to_string())
}

#[test]
fn webhook_serves_admission_reviews_over_tls() {
    let dir = std::env::temp_dir().join(format!("twinroute-webhook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl could not make a certificate");
    let settings = dir.join("settings.yaml");
    std::fs::write(
        &settings,
        "image: \"ghcr.io/twinroute/twinroute:0.1.0\"\nconfigMap: twinroute-config\nkeysSecret: twinroute-provider-keys\nfailurePolicy: Ignore\n",
    )
    .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _child = Kill(
        Command::new(env!("CARGO_BIN_EXE_twinroute"))
            .args(["inject-webhook", "--listen", &listen, "--settings"])
            .arg(&settings)
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("https://localhost:{port}");
    let cacert = cert.to_string_lossy().to_string();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let mut up = false;
    for _ in 0..100 {
        let (_, code) = curl(&[
            "--cacert",
            &cacert,
            "--resolve",
            &resolve,
            &format!("{base}/healthz"),
        ]);
        if code == "200" {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(up, "webhook never answered /healthz over TLS");

    let review = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/admission/annotated.json"
    );
    let (body, code) = curl(&[
        "--cacert",
        &cacert,
        "--resolve",
        &resolve,
        "-H",
        "content-type: application/json",
        "--data-binary",
        &format!("@{review}"),
        &format!("{base}/mutate"),
    ]);
    assert_eq!(code, "200", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    assert!(v["response"]["patch"].as_str().unwrap().len() > 100);

    // Garbage gets a clear 400, not a crash; the server keeps serving.
    let (body, code) = curl(&[
        "--cacert",
        &cacert,
        "--resolve",
        &resolve,
        "--data-binary",
        "{not json",
        &format!("{base}/mutate"),
    ]);
    assert_eq!(code, "400", "{body}");
    let (_, code) = curl(&[
        "--cacert",
        &cacert,
        "--resolve",
        &resolve,
        &format!("{base}/healthz"),
    ]);
    assert_eq!(code, "200");
    // Without trusting its CA a client refuses the connection: it is real TLS.
    let (_, code) = curl(&["--resolve", &resolve, &format!("{base}/healthz")]);
    assert_ne!(code, "200");
}
