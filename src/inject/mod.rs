//! Sidecar injection: the pure decision of the mutating admission webhook.
//!
//! Takes the body of an AdmissionReview (admission.k8s.io/v1) and returns the review response:
//! for a pod annotated `twinroute.io/inject: "true"` that does not carry the sidecar yet, a JSON
//! Patch (RFC 6902) adding the twinroute container (a native sidecar: first init container with
//! `restartPolicy: Always`, or a classic container), its config, tmp and state volumes, the app
//! containers' `OPENAI_BASE_URL`/`ANTHROPIC_BASE_URL`, and a status annotation. Everything else
//! is allowed unchanged. No I/O here: `server` serves it over TLS.
//!
//! Failure handling follows the webhook's `failurePolicy`: a review we cannot make sense of is
//! allowed with a warning under `Ignore` and denied with the reason under `Fail`; a mistake in
//! the pod's own override annotations is always a denial naming the annotation.

pub mod server;

use serde::Deserialize;
use serde_json::{json, Map, Value};

pub const ANNOTATION_INJECT: &str = "twinroute.io/inject";
pub const ANNOTATION_STATUS: &str = "twinroute.io/status";
pub const CONTAINER_NAME: &str = "twinroute";
const CONFIG_VOLUME: &str = "twinroute-config";
const TMP_VOLUME: &str = "twinroute-tmp";
/// Where `state_dir` points (the background queue's job store): an emptyDir, so jobs survive
/// the sidecar's own crash or OOM kill (a container restart keeps the pod's emptyDirs), not the
/// pod's deletion.
const STATE_VOLUME: &str = "twinroute-state";
pub const STATE_MOUNT: &str = "/var/lib/twinroute";
const PORT_PROXY: &str = "twinroute-proxy";
const PORT_ADMIN: &str = "twinroute-admin";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum FailurePolicy {
    #[default]
    Ignore,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantities {
    pub cpu: String,
    pub memory: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub requests: Quantities,
    pub limits: Quantities,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            requests: Quantities {
                cpu: "50m".into(),
                memory: "32Mi".into(),
            },
            limits: Quantities {
                cpu: "1".into(),
                memory: "128Mi".into(),
            },
        }
    }
}

fn default_pull() -> String {
    "IfNotPresent".into()
}
fn default_listen() -> u16 {
    4000
}
fn default_admin() -> u16 {
    9464
}
fn default_state_size() -> String {
    "256Mi".into()
}
fn yes() -> bool {
    true
}

/// What the chart renders into the webhook's `settings.yaml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InjectorSettings {
    pub image: String,
    #[serde(default = "default_pull")]
    pub image_pull_policy: String,
    /// ConfigMap holding `twinroute.yaml`, mounted at /etc/twinroute.
    pub config_map: String,
    /// Secret with provider keys, exposed as env (optional: a missing Secret does not block).
    #[serde(default)]
    pub keys_secret: Option<String>,
    #[serde(default = "default_listen")]
    pub listen_port: u16,
    #[serde(default = "default_admin")]
    pub admin_port: u16,
    #[serde(default = "yes")]
    pub native_sidecar: bool,
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    #[serde(default)]
    pub resources: Resources,
    /// Size limit of the sidecar's state volume (the background queue's jobs).
    #[serde(default = "default_state_size")]
    pub state_size_limit: String,
    /// The Secret key holding the fleet's Redis URL (`shared_state`), given to the sidecar as
    /// `TWINROUTE_REDIS_URL` (the chart's config reads it with `redis_url_env`).
    #[serde(default)]
    pub shared_state_secret: Option<SecretKeyRef>,
}

/// One key of a Secret in the pod's namespace.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// The env var an injected sidecar reads the fleet's Redis URL from.
pub const REDIS_URL_ENV: &str = "TWINROUTE_REDIS_URL";

impl InjectorSettings {
    pub fn from_yaml(text: &str) -> Result<InjectorSettings, String> {
        let s: InjectorSettings =
            serde_yaml::from_str(text).map_err(|e| format!("injector settings: {e}"))?;
        if !valid_image(&s.image) {
            return Err("injector settings: image must be non-empty without spaces".into());
        }
        if !valid_name(&s.config_map) {
            return Err("injector settings: configMap must be a DNS-1123 name".into());
        }
        if let Some(r) = &s.shared_state_secret {
            let key_ok = !r.key.is_empty()
                && r.key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !valid_name(&r.name) || !key_ok {
                return Err(
                    "injector settings: sharedStateSecret needs a DNS-1123 name and a key".into(),
                );
            }
        }
        Ok(s)
    }
}

fn valid_image(v: &str) -> bool {
    !v.is_empty() && v.len() <= 512 && v.chars().all(|c| c.is_ascii_graphic())
}

/// DNS-1123 subdomain: lowercase alphanumerics, '-' and '.', alphanumeric at both ends.
fn valid_name(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A Kubernetes quantity as people write them for cpu and memory: `250m`, `1`, `0.5`, `128Mi`.
fn valid_quantity(v: &str) -> bool {
    let digits_end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, suffix) = v.split_at(digits_end);
    !num.is_empty()
        && num.chars().filter(|c| *c == '.').count() <= 1
        && num.chars().any(|c| c.is_ascii_digit())
        && matches!(
            suffix,
            "" | "m" | "k" | "M" | "G" | "T" | "Ki" | "Mi" | "Gi" | "Ti"
        )
}

/// RFC 6901 escaping for a key used as a JSON Pointer segment.
fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (the `patch` field is `[]byte` in the API).
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The outcome for one review.
#[derive(Debug, PartialEq)]
enum Verdict {
    Allow,
    AllowWithWarning(String),
    Patch(Vec<Value>),
    Deny(String),
}

fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(|v| v.as_str())
}

fn wants_injection(pod: &Value) -> bool {
    annotation(pod, ANNOTATION_INJECT).is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "true" | "yes" | "enabled"
        )
    })
}

fn has_container(pod: &Value, name: &str) -> bool {
    ["/spec/containers", "/spec/initContainers"]
        .iter()
        .any(|p| {
            pod.pointer(p)
                .and_then(|c| c.as_array())
                .is_some_and(|cs| cs.iter().any(|c| c["name"] == name))
        })
}

/// Checks one override annotation's value.
type Validator = fn(&str) -> bool;

/// Settings with the pod's override annotations applied, or the annotation that is wrong.
fn effective(pod: &Value, s: &InjectorSettings) -> Result<InjectorSettings, String> {
    let mut s = s.clone();
    let overrides: [(&str, Validator); 7] = [
        ("twinroute.io/image", valid_image),
        ("twinroute.io/config-map", valid_name),
        ("twinroute.io/keys-secret", valid_name),
        ("twinroute.io/cpu-request", valid_quantity),
        ("twinroute.io/memory-request", valid_quantity),
        ("twinroute.io/cpu-limit", valid_quantity),
        ("twinroute.io/memory-limit", valid_quantity),
    ];
    for (key, valid) in overrides {
        let Some(v) = annotation(pod, key) else {
            continue;
        };
        if !valid(v) {
            return Err(format!("annotation {key} has an invalid value"));
        }
        let v = v.to_string();
        match key {
            "twinroute.io/image" => s.image = v,
            "twinroute.io/config-map" => s.config_map = v,
            "twinroute.io/keys-secret" => s.keys_secret = Some(v),
            "twinroute.io/cpu-request" => s.resources.requests.cpu = v,
            "twinroute.io/memory-request" => s.resources.requests.memory = v,
            "twinroute.io/cpu-limit" => s.resources.limits.cpu = v,
            _ => s.resources.limits.memory = v,
        }
    }
    Ok(s)
}

fn sidecar(s: &InjectorSettings) -> Value {
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": PORT_ADMIN},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 1,
        })
    };
    let mut c = json!({
        "name": CONTAINER_NAME,
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "args": ["run", "--config", "/etc/twinroute/twinroute.yaml"],
        "ports": [
            {"name": PORT_PROXY, "containerPort": s.listen_port, "protocol": "TCP"},
            {"name": PORT_ADMIN, "containerPort": s.admin_port, "protocol": "TCP"},
        ],
        "startupProbe": probe("/healthz", 1, 30),
        "livenessProbe": probe("/healthz", 10, 3),
        "readinessProbe": probe("/readyz", 5, 2),
        "resources": {
            "requests": {"cpu": s.resources.requests.cpu, "memory": s.resources.requests.memory},
            "limits": {"cpu": s.resources.limits.cpu, "memory": s.resources.limits.memory},
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": "/etc/twinroute", "readOnly": true},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
            {"name": STATE_VOLUME, "mountPath": STATE_MOUNT},
        ],
    });
    if let Some(secret) = &s.keys_secret {
        c["envFrom"] = json!([{"secretRef": {"name": secret, "optional": true}}]);
    }
    if let Some(r) = &s.shared_state_secret {
        // Not optional: a config with shared_state and no URL would not start.
        c["env"] = json!([{
            "name": REDIS_URL_ENV,
            "valueFrom": {"secretKeyRef": {"name": r.name, "key": r.key}},
        }]);
    }
    if s.native_sidecar {
        c["restartPolicy"] = json!("Always");
    }
    c
}

/// The JSON Patch that injects the sidecar into `pod`, in an order that applies cleanly.
fn patch(pod: &Value, s: &InjectorSettings) -> Result<Vec<Value>, String> {
    let spec = pod
        .get("spec")
        .and_then(|v| v.as_object())
        .ok_or("pod has no spec")?;
    let mut ops = Vec::new();

    for name in [CONFIG_VOLUME, TMP_VOLUME, STATE_VOLUME] {
        let clash = spec
            .get("volumes")
            .and_then(|v| v.as_array())
            .is_some_and(|vs| vs.iter().any(|v| v["name"] == name));
        if clash {
            return Err(format!("the pod already has a volume named {name}"));
        }
    }
    let volumes = [
        json!({"name": CONFIG_VOLUME, "configMap": {"name": s.config_map}}),
        json!({"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "1Mi"}}),
        json!({"name": STATE_VOLUME, "emptyDir": {"sizeLimit": s.state_size_limit}}),
    ];
    if spec.get("volumes").and_then(|v| v.as_array()).is_some() {
        for v in volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    }

    // Port names must be unique in the pod: drop ours if an app already uses one.
    let mut sc = sidecar(s);
    let taken: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(|v| v.as_array()))
        .flatten()
        .filter_map(|c| c.get("ports").and_then(|p| p.as_array()))
        .flatten()
        .filter_map(|p| p.get("name").and_then(|n| n.as_str()))
        .collect();
    if taken.contains(&PORT_ADMIN) || taken.contains(&PORT_PROXY) {
        return Err("the pod already uses port name twinroute-proxy or twinroute-admin".into());
    }

    // The app containers learn where twinroute is, unless they already set it.
    let url = format!("http://127.0.0.1:{}", s.listen_port);
    if let Some(cs) = spec.get("containers").and_then(|v| v.as_array()) {
        for (i, c) in cs.iter().enumerate() {
            let env = c.get("env").and_then(|e| e.as_array());
            let has = |n: &str| env.is_some_and(|e| e.iter().any(|v| v["name"] == n));
            let add: Vec<Value> = [
                ("OPENAI_BASE_URL", format!("{url}/v1")),
                ("ANTHROPIC_BASE_URL", url.clone()),
            ]
            .into_iter()
            .filter(|(n, _)| !has(n))
            .map(|(n, v)| json!({"name": n, "value": v}))
            .collect();
            if add.is_empty() {
                continue;
            }
            if env.is_some() {
                for v in add {
                    ops.push(json!({"op": "add", "path": format!("/spec/containers/{i}/env/-"), "value": v}));
                }
            } else {
                ops.push(
                    json!({"op": "add", "path": format!("/spec/containers/{i}/env"), "value": add}),
                );
            }
        }
    }

    if s.native_sidecar {
        // First init container: started before the others, so they can use it too.
        match spec.get("initContainers").and_then(|v| v.as_array()) {
            Some(_) => {
                ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": sc}))
            }
            None => ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [sc]})),
        }
    } else {
        sc.as_object_mut().map(|o| o.remove("restartPolicy"));
        ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": sc}));
    }

    if pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.as_object())
        .is_some()
    {
        ops.push(json!({
            "op": "add",
            "path": format!("/metadata/annotations/{}", pointer_escape(ANNOTATION_STATUS)),
            "value": "injected",
        }));
    } else {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {ANNOTATION_STATUS: "injected"}}));
    }
    if pod
        .pointer("/metadata/labels")
        .and_then(|a| a.as_object())
        .is_some()
    {
        ops.push(json!({"op": "add", "path": "/metadata/labels/twinroute.io~1injected", "value": "true"}));
    } else {
        ops.push(json!({"op": "add", "path": "/metadata/labels", "value": {"twinroute.io/injected": "true"}}));
    }
    Ok(ops)
}

fn decide(request: &Value, s: &InjectorSettings) -> Verdict {
    if request["kind"]["kind"] != "Pod" && request["resource"]["resource"] != "pods" {
        return Verdict::AllowWithWarning("not a pod".into());
    }
    let Some(pod) = request.get("object").filter(|o| o.is_object()) else {
        return Verdict::AllowWithWarning("the review carries no pod object".into());
    };
    if !wants_injection(pod) {
        return Verdict::Allow;
    }
    // Idempotent: the API server may call us again (reinvocationPolicy: IfNeeded).
    if annotation(pod, ANNOTATION_STATUS) == Some("injected") || has_container(pod, CONTAINER_NAME)
    {
        return Verdict::Allow;
    }
    let s = match effective(pod, s) {
        Ok(s) => s,
        Err(e) => return Verdict::Deny(e),
    };
    match patch(pod, &s) {
        Ok(ops) => Verdict::Patch(ops),
        Err(e) => Verdict::Deny(e),
    }
}

/// Answer one AdmissionReview body: `(HTTP status, response body)`.
pub fn review(body: &[u8], settings: &InjectorSettings) -> (u16, Vec<u8>) {
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    let Ok(v) = parsed else {
        return (
            400,
            json!({"error": "body is not JSON"})
                .to_string()
                .into_bytes(),
        );
    };
    let Some(uid) = v.pointer("/request/uid").and_then(|u| u.as_str()) else {
        return (
            400,
            json!({"error": "not an AdmissionReview with request.uid"})
                .to_string()
                .into_bytes(),
        );
    };
    let verdict = match v.get("apiVersion").and_then(|a| a.as_str()) {
        Some("admission.k8s.io/v1") => decide(&v["request"], settings),
        other => Verdict::AllowWithWarning(format!(
            "unsupported AdmissionReview apiVersion {other:?} (want admission.k8s.io/v1)"
        )),
    };
    // A review we could not make sense of follows the failure policy; a denial of the pod's own
    // mistake does not.
    let verdict = match verdict {
        Verdict::AllowWithWarning(w) if settings.failure_policy == FailurePolicy::Fail => {
            Verdict::Deny(w)
        }
        v => v,
    };
    let mut response = Map::new();
    response.insert("uid".into(), json!(uid));
    match verdict {
        Verdict::Allow => {
            response.insert("allowed".into(), json!(true));
        }
        Verdict::AllowWithWarning(w) => {
            response.insert("allowed".into(), json!(true));
            response.insert(
                "warnings".into(),
                json!([format!("twinroute injection skipped: {w}")]),
            );
        }
        Verdict::Patch(ops) => {
            let patch = serde_json::to_vec(&ops).unwrap_or_default();
            response.insert("allowed".into(), json!(true));
            response.insert("patchType".into(), json!("JSONPatch"));
            response.insert("patch".into(), json!(base64(&patch)));
        }
        Verdict::Deny(why) => {
            response.insert("allowed".into(), json!(false));
            response.insert(
                "status".into(),
                json!({"code": 400, "message": format!("twinroute injection: {why}")}),
            );
        }
    }
    let out = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    });
    (200, out.to_string().into_bytes())
}

#[cfg(test)]
mod tests;
