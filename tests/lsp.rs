//! `sslc lsp` driven as an editor drives it: JSON-RPC over the child's stdin and stdout.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

struct Client {
    child: Child,
    stdin: ChildStdin,
    incoming: Receiver<Value>,
    next_id: u64,
    /// Notifications received while waiting for responses.
    notifications: Vec<Value>,
}

/// How long one answer may take before the test gives up instead of hanging: a guard, not a
/// measurement (answers take milliseconds).
const PATIENCE: Duration = Duration::from_secs(60);

impl Client {
    fn start() -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sslc"))
            .arg("lsp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sslc lsp starts");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, incoming) = channel();
        std::thread::spawn(move || loop {
            let mut length = 0;
            loop {
                let mut line = String::new();
                if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some(v) = line.strip_prefix("Content-Length: ") {
                    length = v.parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            stdout.read_exact(&mut body).unwrap();
            if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                return;
            }
        });
        let mut c = Client { child, stdin, incoming, next_id: 0, notifications: Vec::new() };
        let init = c.request("initialize", json!({"capabilities": {}, "processId": null, "rootUri": null}));
        assert_eq!(init["capabilities"]["hoverProvider"], json!(true), "{init}");
        assert_eq!(init["capabilities"]["documentFormattingProvider"], json!(true), "{init}");
        c.notify("initialized", json!({}));
        c
    }

    fn send(&mut self, msg: Value) {
        let body = msg.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// The whole response (result or error) to a request.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let msg = self.incoming.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("no answer to {method}"));
            if msg.get("id") == Some(&json!(id)) {
                return msg;
            }
            self.notifications.push(msg);
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params);
        assert!(r.get("error").is_none(), "{method} failed: {r}");
        r["result"].clone()
    }

    /// The next diagnostics published for `uri`.
    fn diagnostics(&mut self, uri: &str) -> Vec<Value> {
        let matches = |m: &Value| m["method"] == "textDocument/publishDiagnostics" && m["params"]["uri"] == uri;
        if let Some(k) = self.notifications.iter().position(matches) {
            return self.notifications.remove(k)["params"]["diagnostics"].as_array().unwrap().clone();
        }
        loop {
            let msg = self.incoming.recv_timeout(PATIENCE).expect("diagnostics are published");
            if matches(&msg) {
                return msg["params"]["diagnostics"].as_array().unwrap().clone();
            }
        }
    }

    fn open(&mut self, uri: &str, text: &str) {
        let doc = json!({"uri": uri, "languageId": "ssl", "version": 1, "text": text});
        self.notify("textDocument/didOpen", json!({"textDocument": doc}));
    }

    fn change(&mut self, uri: &str, version: i32, text: &str) {
        let params = json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"text": text}]});
        self.notify("textDocument/didChange", params);
    }

    fn at(uri: &str, text: &str, offset: usize) -> Value {
        let line = text[..offset].matches('\n').count();
        let character = offset - text[..offset].rfind('\n').map_or(0, |k| k + 1);
        json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": character}})
    }

    fn shutdown(mut self) {
        assert_eq!(self.request("shutdown", Value::Null), Value::Null);
        self.notify("exit", Value::Null);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "sslc lsp exited with {status}");
    }
}

fn uri(path: &Path) -> String {
    format!("file://{}", std::fs::canonicalize(path).unwrap().display())
}

fn hover_text(c: &mut Client, u: &str, text: &str, offset: usize) -> String {
    let h = c.request("textDocument/hover", Client::at(u, text, offset));
    h["contents"]["value"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_client_session_gets_diagnostics_hovers_definitions_completions_and_formatting() {
    let path = PathBuf::from("objectives/simclr.ssl");
    let text = std::fs::read_to_string(&path).unwrap();
    let u = uri(&path);
    let mut c = Client::start();
    c.open(&u, &text);
    assert_eq!(c.diagnostics(&u), Vec::<Value>::new(), "simclr checks clean");

    // An error while typing, with the span, message and hint of `sslc check`; then its fix.
    let broken = text.replace("nt_xent(z1", "nt_xnet(z1");
    c.change(&u, 2, &broken);
    let d = c.diagnostics(&u);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0]["message"].as_str().unwrap().contains("nt_xnet"), "{d:?}");
    assert!(d[0]["message"].as_str().unwrap().contains("hint: did you mean `nt_xent`?"), "{d:?}");
    let at = broken.find("nt_xnet").unwrap();
    assert_eq!(d[0]["range"]["start"], Client::at(&u, &broken, at)["position"], "{d:?}");
    c.change(&u, 3, &text);
    assert_eq!(c.diagnostics(&u), Vec::<Value>::new());

    // Hover: an input's declared shape, a loss value's shape, a built-in's signature.
    let z1 = text.find("z1, z2, tau").unwrap();
    assert!(hover_text(&mut c, &u, &text, z1).contains("input z1: [N, D] = encoder(x1)"));
    let per_sample = text.find("per_sample =").unwrap() + 2;
    let h = hover_text(&mut c, &u, &text, per_sample);
    assert!(h.contains("per_sample: [N]"), "{h}");
    let mean = text.find("mean(per_sample)").unwrap() + 1;
    let h = hover_text(&mut c, &u, &text, mean);
    assert!(h.contains("mean(...): f32") && h.contains("mean(x, axis=k, keepdim=false)"), "{h}");
    let tau = text.find("param tau").unwrap() + 7;
    assert!(hover_text(&mut c, &u, &text, tau).contains("param tau = 0.2"));

    // Definition across an import, and of an import itself.
    let def = c.request("textDocument/definition", Client::at(&u, &text, text.find("nt_xent").unwrap()));
    let lib = Path::new("objectives/lib/contrastive.ssl");
    let lib_text = std::fs::read_to_string(lib).unwrap();
    assert_eq!(def["uri"], json!(uri(lib)), "{def}");
    assert_eq!(def["range"]["start"], Client::at("", &lib_text, lib_text.find("nt_xent(z1").unwrap())["position"]);
    let import = c.request("textDocument/definition", Client::at(&u, &text, 10));
    assert_eq!(import["uri"], json!(uri(lib)), "{import}");

    // References: a parameter's declaration and use, with or without the declaration; an
    // imported function's declaration in the library and its call here.
    let tau_use = text.find("z2, tau)").unwrap() + 4;
    let position = |offset: usize| Client::at(&u, &text, offset)["position"].clone();
    let mut params = Client::at(&u, &text, tau_use);
    params["context"] = json!({"includeDeclaration": true});
    let refs = c.request("textDocument/references", params.clone());
    let starts: Vec<Value> = refs.as_array().unwrap().iter().map(|r| r["range"]["start"].clone()).collect();
    assert_eq!(starts, [position(text.find("tau = 0.2").unwrap()), position(tau_use)], "{refs}");
    params["context"] = json!({"includeDeclaration": false});
    let refs = c.request("textDocument/references", params);
    assert_eq!(refs.as_array().unwrap().len(), 1, "{refs}");
    let mut params = Client::at(&u, &text, text.find("nt_xent").unwrap());
    params["context"] = json!({"includeDeclaration": true});
    let refs = c.request("textDocument/references", params);
    let uris: Vec<&str> = refs.as_array().unwrap().iter().map(|r| r["uri"].as_str().unwrap()).collect();
    assert!(uris.contains(&uri(lib).as_str()) && uris.contains(&u.as_str()), "{refs}");

    // Signature help in a call: a user function's declaration, a built-in's manual entry.
    let help = c.request("textDocument/signatureHelp", Client::at(&u, &text, tau_use - 4));
    assert!(help["signatures"][0]["label"].as_str().unwrap().starts_with("nt_xent(z1: [N, D]"), "{help}");
    assert_eq!(help["activeParameter"], json!(1), "{help}");
    let help = c.request("textDocument/signatureHelp", Client::at(&u, &text, text.find("per_sample)").unwrap()));
    assert!(help["signatures"][0]["label"].as_str().unwrap().starts_with("mean(x"), "{help}");
    assert_eq!(help["activeParameter"], json!(0), "{help}");

    // Semantic tokens: what each identifier names, decoded from the protocol's relative form.
    let tokens = c.request("textDocument/semanticTokens/full", json!({"textDocument": {"uri": u}}));
    let data: Vec<u64> = tokens["data"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let (mut line, mut character, mut decoded) = (0, 0, Vec::new());
    for t in data.chunks(5) {
        (line, character) = if t[0] > 0 { (line + t[0], t[1]) } else { (line, character + t[1]) };
        decoded.push((json!({"line": line, "character": character}), t[2], t[3], t[4]));
    }
    let token = |offset: usize| decoded.iter().find(|d| d.0 == position(offset)).map(|d| (d.1, d.2, d.3));
    assert_eq!(token(tau_use), Some((3, 2, 1)), "a param: a read-only variable");
    assert_eq!(token(text.find("tau = 0.2").unwrap()), Some((3, 2, 1 | 4)), "its declaration");
    assert_eq!(token(text.find("nt_xent").unwrap()), Some((7, 0, 0)), "an imported function");
    assert_eq!(token(text.find("mean(").unwrap()), Some((4, 0, 2)), "a built-in function");
    assert_eq!(token(text.find("objective").unwrap()), Some((9, 6, 0)), "a keyword");
    assert_eq!(token(text.find("z1: [N").unwrap()).map(|t| t.1), Some(3), "an input: a property");

    // Hover inside the library: a function's local, with the shape its own signature gives.
    c.open(&uri(lib), &lib_text);
    assert_eq!(c.diagnostics(&uri(lib)), Vec::<Value>::new());
    let sim = lib_text.find("let sim").unwrap() + 5;
    let h = hover_text(&mut c, &uri(lib), &lib_text, sim);
    assert!(h.contains("sim: [2*N, 2*N]") || h.contains("sim: [2N, 2N]"), "{h}");

    // Completion: names in scope, built-ins and keywords.
    let items = c.request("textDocument/completion", Client::at(&u, &text, text.find("loss =").unwrap()));
    let labels: Vec<&str> = items.as_array().unwrap().iter().map(|i| i["label"].as_str().unwrap()).collect();
    for expected in ["tau", "z1", "nt_xent", "warmup_cosine", "normalize", "epoch", "param"] {
        assert!(labels.contains(&expected), "{expected} not in {labels:?}");
    }

    // Outline and formatting.
    let symbols = c.request("textDocument/documentSymbol", json!({"textDocument": {"uri": u}}));
    assert_eq!(symbols[0]["name"], "simclr", "{symbols}");
    assert!(symbols[0]["children"].as_array().unwrap().iter().any(|s| s["name"] == "tau"), "{symbols}");
    let messy = text.replace("mean(per_sample)", "mean( per_sample )").replace("    input z2", "input   z2");
    c.change(&u, 4, &messy);
    c.diagnostics(&u);
    let edits = c.request(
        "textDocument/formatting",
        json!({"textDocument": {"uri": u}, "options": {"tabSize": 4, "insertSpaces": true}}),
    );
    assert_eq!(edits[0]["newText"], json!(text), "{edits}");
    c.change(&u, 5, &text);
    let none = c.request(
        "textDocument/formatting",
        json!({"textDocument": {"uri": u}, "options": {"tabSize": 4, "insertSpaces": true}}),
    );
    assert_eq!(none, json!([]));
    c.shutdown();
}

/// Broken buffers as an editor sees them mid-typing: the malformed test inputs and cuts and
/// byte flips of every shipped objective.
fn hostile_buffers() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = ["tests/malformed", "objectives", "objectives/lib"]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ssl"))
        .collect();
    files.sort();
    for p in files {
        let bytes = std::fs::read(&p).unwrap();
        out.push((p.clone(), String::from_utf8_lossy(&bytes).into_owned()));
        if p.starts_with("tests") {
            continue;
        }
        let n = bytes.len();
        for k in 1..4 {
            let cut = String::from_utf8_lossy(&bytes[..n * k / 4]).into_owned();
            out.push((p.clone(), cut));
            let mut flipped = bytes.clone();
            flipped[n * k / 4] = b"({[:=,-\"\n"[k * 3 % 9];
            out.push((p.clone(), String::from_utf8_lossy(&flipped).into_owned()));
        }
    }
    out
}

#[test]
fn malformed_buffers_get_diagnostics_and_never_break_the_server() {
    let mut c = Client::start();
    for (n, (path, text)) in hostile_buffers().into_iter().enumerate() {
        let u = uri(&path);
        c.open(&u, &text);
        c.diagnostics(&u);
        for offset in (0..text.len()).step_by(text.len() / 5 + 1).filter(|&k| text.is_char_boundary(k)) {
            let pos = Client::at(&u, &text, offset);
            let mut with_context = pos.clone();
            with_context["context"] = json!({"includeDeclaration": true});
            for (method, params) in [
                ("textDocument/hover", &pos),
                ("textDocument/definition", &pos),
                ("textDocument/completion", &pos),
                ("textDocument/signatureHelp", &pos),
                ("textDocument/references", &with_context),
            ] {
                let r = c.call(method, params.clone());
                assert!(r.get("error").is_none(), "{method} at {offset} of {} ({n}): {r}", path.display());
            }
        }
        let r = c.call(
            "textDocument/formatting",
            json!({"textDocument": {"uri": u}, "options": {"tabSize": 4, "insertSpaces": true}}),
        );
        assert!(r.get("error").is_none(), "{r}");
        for method in ["textDocument/documentSymbol", "textDocument/semanticTokens/full"] {
            let r = c.call(method, json!({"textDocument": {"uri": u}}));
            assert!(r.get("error").is_none(), "{method}: {r}");
        }
        c.notify("textDocument/didClose", json!({"textDocument": {"uri": u}}));
    }
    c.shutdown();
}

/// An imported file's unsaved buffer is what the objective importing it sees: renaming a
/// library function in the editor breaks the open objective at once, and undoing it clears the
/// error, without saving either file.
#[test]
fn unsaved_imported_buffers_are_what_imports_read() {
    let (lib, objective) = (Path::new("objectives/lib/contrastive.ssl"), Path::new("objectives/simclr.ssl"));
    let (lib_text, text) = (std::fs::read_to_string(lib).unwrap(), std::fs::read_to_string(objective).unwrap());
    let (lib_uri, u) = (uri(lib), uri(objective));
    let mut c = Client::start();
    c.open(&lib_uri, &lib_text);
    assert_eq!(c.diagnostics(&lib_uri), Vec::<Value>::new());
    c.open(&u, &text);
    assert_eq!(c.diagnostics(&u), Vec::<Value>::new());
    c.change(&lib_uri, 2, &lib_text.replace("fn nt_xent(", "fn nt_xent_renamed("));
    assert_eq!(c.diagnostics(&lib_uri), Vec::<Value>::new());
    let d = c.diagnostics(&u);
    assert!(d.iter().any(|d| d["message"].as_str().unwrap().contains("nt_xent")), "{d:?}");
    c.change(&lib_uri, 3, &lib_text);
    assert_eq!(c.diagnostics(&lib_uri), Vec::<Value>::new());
    assert_eq!(c.diagnostics(&u), Vec::<Value>::new(), "the fix in the library clears the objective");
    assert_eq!(std::fs::read_to_string(lib).unwrap(), lib_text, "nothing was saved");
    c.shutdown();
}
