// Starts `sslc lsp` for .ssl files; everything else (diagnostics, hover, definition,
// completion, outline, formatting) is the server's.
const vscode = require('vscode');
const { LanguageClient } = require('vscode-languageclient/node');

let client;

function activate(context) {
  const command = vscode.workspace.getConfiguration('sslc').get('path') || 'sslc';
  const server = { command, args: ['lsp'] };
  const options = { documentSelector: [{ scheme: 'file', language: 'ssl' }] };
  client = new LanguageClient('sslc', 'sslc language server', server, options);
  context.subscriptions.push(client);
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
