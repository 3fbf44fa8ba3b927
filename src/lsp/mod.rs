//! `sslc lsp`: a Language Server Protocol server over stdin/stdout for `.ssl` files.
//!
//! Every change to a buffer recompiles it (with its imports, from disk) and publishes the
//! diagnostics `sslc check` would print; hover, definition, references, completion, signature
//! help, semantic tokens, the outline and formatting answer from that compile. A request that panics is answered with an error and the
//! server goes on: an editor must never lose its server to a malformed buffer.

mod analysis;
mod builtins;
mod features;
mod index;
mod navigate;
mod text;

use analysis::Analysis;
use lsp_server::{Connection, ErrorCode, Message, Notification, Request, Response};
use lsp_types::notification::{
    DidChangeTextDocument, DidCloseTextDocument, DidOpenTextDocument, Notification as _, PublishDiagnostics,
};
use lsp_types::request::{
    Completion, DocumentSymbolRequest, Formatting, GotoDefinition, HoverRequest, References, Request as _,
    SemanticTokensFullRequest, SignatureHelpRequest,
};
use lsp_types::{
    CompletionOptions, HoverProviderCapability, OneOf, PublishDiagnosticsParams, SemanticTokensFullOptions,
    SemanticTokensOptions, SemanticTokensServerCapabilities, ServerCapabilities, SignatureHelpOptions,
    TextDocumentSyncCapability, TextDocumentSyncKind, Uri,
};
use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

struct Document {
    text: String,
    analysis: Analysis,
    /// The last analysis of this buffer that parsed: completion's names while a half-typed
    /// line does not.
    parsed: Option<Analysis>,
    /// Files other than this one that got diagnostics from it last time (to clear them).
    published: HashSet<Uri>,
}

#[derive(Default)]
struct Server {
    docs: HashMap<Uri, Document>,
}

fn capabilities() -> ServerCapabilities {
    ServerCapabilities {
        text_document_sync: Some(TextDocumentSyncCapability::Kind(TextDocumentSyncKind::FULL)),
        hover_provider: Some(HoverProviderCapability::Simple(true)),
        definition_provider: Some(OneOf::Left(true)),
        completion_provider: Some(CompletionOptions::default()),
        document_symbol_provider: Some(OneOf::Left(true)),
        document_formatting_provider: Some(OneOf::Left(true)),
        references_provider: Some(OneOf::Left(true)),
        signature_help_provider: Some(SignatureHelpOptions {
            trigger_characters: Some(vec!["(".into(), ",".into()]),
            ..Default::default()
        }),
        semantic_tokens_provider: Some(SemanticTokensServerCapabilities::SemanticTokensOptions(
            SemanticTokensOptions {
                legend: navigate::legend(),
                full: Some(SemanticTokensFullOptions::Bool(true)),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// Serves one client on stdin/stdout until it exits; returns the process's exit status.
pub fn run() -> i32 {
    let (connection, io) = Connection::stdio();
    let caps = serde_json::to_value(capabilities()).expect("capabilities serialise");
    if let Err(e) = connection.initialize(caps) {
        eprintln!("sslc lsp: initialization failed: {e}");
        return 1;
    }
    let status = serve(&connection);
    drop(connection);
    if let Err(e) = io.join() {
        eprintln!("sslc lsp: {e}");
        return 1;
    }
    status
}

fn serve(connection: &Connection) -> i32 {
    let mut server = Server::default();
    for msg in &connection.receiver {
        let out = match msg {
            Message::Request(req) => {
                match connection.handle_shutdown(&req) {
                    Ok(true) => return 0,
                    Ok(false) => {}
                    Err(e) => {
                        eprintln!("sslc lsp: {e}");
                        return 1;
                    }
                }
                vec![Message::Response(server.request(req))]
            }
            Message::Notification(n) => {
                let method = n.method.clone();
                catch_unwind(AssertUnwindSafe(|| server.notify(n))).unwrap_or_else(|_| {
                    eprintln!("sslc lsp: internal error handling `{method}`; the server goes on");
                    Vec::new()
                })
            }
            Message::Response(_) => Vec::new(),
        };
        for m in out {
            if connection.sender.send(m).is_err() {
                return 1;
            }
        }
    }
    0
}

impl Server {
    fn request(&mut self, req: Request) -> Response {
        let id = req.id.clone();
        let method = req.method.clone();
        match catch_unwind(AssertUnwindSafe(|| self.answer(req))) {
            Ok(Ok(value)) => Response::new_ok(id, value),
            Ok(Err((code, message))) => Response::new_err(id, code as i32, message),
            Err(_) => Response::new_err(
                id,
                ErrorCode::InternalError as i32,
                format!("internal error in sslc while answering `{method}`; please report it with the file"),
            ),
        }
    }

    fn answer(&mut self, req: Request) -> Result<serde_json::Value, (ErrorCode, String)> {
        fn params<T: serde::de::DeserializeOwned>(req: Request) -> Result<T, (ErrorCode, String)> {
            serde_json::from_value(req.params).map_err(|e| (ErrorCode::InvalidParams, e.to_string()))
        }
        let json = |v: serde_json::Result<serde_json::Value>| v.map_err(|e| (ErrorCode::InternalError, e.to_string()));
        match req.method.as_str() {
            HoverRequest::METHOD => {
                let p: lsp_types::HoverParams = params(req)?;
                let pos = &p.text_document_position_params;
                let hover = self.at(&pos.text_document.uri, pos.position, |d, offset| {
                    features::hover(&d.analysis, offset).map(|contents| lsp_types::Hover {
                        contents: lsp_types::HoverContents::Markup(contents),
                        range: None,
                    })
                });
                json(serde_json::to_value(hover.flatten()))
            }
            GotoDefinition::METHOD => {
                let p: lsp_types::GotoDefinitionParams = params(req)?;
                let pos = &p.text_document_position_params;
                let loc = self
                    .at(&pos.text_document.uri, pos.position, |d, offset| features::definition(&d.analysis, offset));
                json(serde_json::to_value(loc.flatten().map(lsp_types::GotoDefinitionResponse::Scalar)))
            }
            Completion::METHOD => {
                let p: lsp_types::CompletionParams = params(req)?;
                let pos = &p.text_document_position;
                let items = self.at(&pos.text_document.uri, pos.position, |d, offset| {
                    let a = if d.analysis.files.is_empty() {
                        d.parsed.as_ref().unwrap_or(&d.analysis)
                    } else {
                        &d.analysis
                    };
                    features::completion(a, offset.min(a.root.map_or(0, |r| a.text(r).len())))
                });
                json(serde_json::to_value(items.unwrap_or_default()))
            }
            References::METHOD => {
                let p: lsp_types::ReferenceParams = params(req)?;
                let pos = &p.text_document_position;
                let include = p.context.include_declaration;
                let locations = self.at(&pos.text_document.uri, pos.position, |d, offset| {
                    navigate::references(&d.analysis, offset, include)
                });
                json(serde_json::to_value(locations.unwrap_or_default()))
            }
            SignatureHelpRequest::METHOD => {
                let p: lsp_types::SignatureHelpParams = params(req)?;
                let pos = &p.text_document_position_params;
                let help = self.at(&pos.text_document.uri, pos.position, |d, offset| {
                    navigate::signature_help(&d.analysis, offset)
                });
                json(serde_json::to_value(help.flatten()))
            }
            SemanticTokensFullRequest::METHOD => {
                let p: lsp_types::SemanticTokensParams = params(req)?;
                let tokens =
                    self.docs.get(&p.text_document.uri).map(|d| navigate::semantic_tokens(&d.analysis, &d.text));
                json(serde_json::to_value(tokens.map(lsp_types::SemanticTokensResult::Tokens)))
            }
            DocumentSymbolRequest::METHOD => {
                let p: lsp_types::DocumentSymbolParams = params(req)?;
                let symbols = self.docs.get(&p.text_document.uri).map(|d| features::symbols(&d.analysis));
                json(serde_json::to_value(lsp_types::DocumentSymbolResponse::Nested(symbols.unwrap_or_default())))
            }
            Formatting::METHOD => {
                let p: lsp_types::DocumentFormattingParams = params(req)?;
                let edits = self.docs.get(&p.text_document.uri).map(|d| features::formatting(&d.text));
                json(serde_json::to_value(edits.unwrap_or_default()))
            }
            other => Err((ErrorCode::MethodNotFound, format!("sslc lsp does not implement `{other}`"))),
        }
    }

    /// Runs `f` on the open document `uri` at a protocol position; None when it is not open.
    fn at<T>(&self, uri: &Uri, pos: lsp_types::Position, f: impl FnOnce(&Document, usize) -> T) -> Option<T> {
        let d = self.docs.get(uri)?;
        Some(f(d, text::offset(&d.text, pos)))
    }

    fn notify(&mut self, n: Notification) -> Vec<Message> {
        let uri_text = match n.method.as_str() {
            DidOpenTextDocument::METHOD => serde_json::from_value::<lsp_types::DidOpenTextDocumentParams>(n.params)
                .ok()
                .map(|p| (p.text_document.uri, p.text_document.text)),
            DidChangeTextDocument::METHOD => {
                serde_json::from_value::<lsp_types::DidChangeTextDocumentParams>(n.params).ok().and_then(|mut p| {
                    let last = p.content_changes.pop()?;
                    Some((p.text_document.uri, last.text))
                })
            }
            DidCloseTextDocument::METHOD => {
                if let Ok(p) = serde_json::from_value::<lsp_types::DidCloseTextDocumentParams>(n.params) {
                    if let Some(d) = self.docs.remove(&p.text_document.uri) {
                        let cleared = d.published.into_iter().chain([p.text_document.uri]);
                        return cleared.map(|uri| publish(uri, Vec::new())).collect();
                    }
                }
                None
            }
            _ => None,
        };
        match uri_text {
            Some((uri, text)) => self.update(uri, text),
            None => Vec::new(),
        }
    }

    /// The open buffers other than `except`, by canonical path: what imports read.
    fn open_texts(&self, except: &Uri) -> HashMap<PathBuf, String> {
        let canonical = |uri: &Uri| {
            let path = text::uri_to_path(uri);
            path.canonicalize().unwrap_or(path)
        };
        self.docs.iter().filter(|(uri, _)| *uri != except).map(|(uri, d)| (canonical(uri), d.text.clone())).collect()
    }

    /// Recompiles a buffer and publishes its diagnostics, then those of the open buffers that
    /// import it (they see its unsaved text).
    fn update(&mut self, uri: Uri, text: String) -> Vec<Message> {
        let mut out = self.analyse(uri.clone(), text);
        let path = text::uri_to_path(&uri);
        let path = path.canonicalize().unwrap_or(path);
        let dependents: Vec<(Uri, String)> = (self.docs.iter())
            .filter(|(other, d)| {
                // Its imports, or (when they did not load) the files it reported errors in.
                let imports = d.analysis.files.iter().chain(d.parsed.iter().flat_map(|p| &p.files));
                **other != uri && (d.published.contains(&uri) || imports.into_iter().any(|f| f.path == path))
            })
            .map(|(other, d)| (other.clone(), d.text.clone()))
            .collect();
        for (other, text) in dependents {
            out.extend(self.analyse(other, text));
        }
        out
    }

    /// Recompiles one buffer and publishes its diagnostics.
    fn analyse(&mut self, uri: Uri, text: String) -> Vec<Message> {
        let analysis = Analysis::new(&text::uri_to_path(&uri), text.clone(), &self.open_texts(&uri));
        let (parsed, old_published) = match self.docs.remove(&uri) {
            Some(old) if analysis.files.is_empty() => {
                let last_parsed = if old.analysis.files.is_empty() { old.parsed } else { Some(old.analysis) };
                (last_parsed, old.published)
            }
            Some(old) => (None, old.published),
            None => (None, HashSet::new()),
        };
        let by_file = analysis.published(&uri);
        let published: HashSet<Uri> = by_file.keys().filter(|u| **u != uri).cloned().collect();
        let mut out: Vec<Message> =
            old_published.difference(&published).map(|u| publish(u.clone(), Vec::new())).collect();
        out.extend(by_file.into_iter().map(|(u, d)| publish(u, d)));
        self.docs.insert(uri, Document { text, analysis, parsed, published });
        out
    }
}

fn publish(uri: Uri, diagnostics: Vec<lsp_types::Diagnostic>) -> Message {
    let params = PublishDiagnosticsParams { uri, diagnostics, version: None };
    Message::Notification(Notification::new(PublishDiagnostics::METHOD.to_string(), params))
}
