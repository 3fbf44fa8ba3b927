// A page with Monaco on localhost, whose hovers and diagnostics come from a real `sslc lsp`.
//
// The page asks this server over HTTP; the server keeps one `sslc lsp` child and speaks
// Content-Length framed JSON-RPC with it, as an editor would (see tests/lsp.rs). Nothing is
// canned: the hover Monaco shows is the language server's answer.
//
//   node server.js FILE.ssl [PORT]      serve FILE.ssl; SSLC names the binary
//                                       (default target/debug/sslc)
const { spawn } = require('child_process');
const fs = require('fs');
const http = require('http');
const path = require('path');
const { pathToFileURL } = require('url');

const root = path.resolve(__dirname, '..', '..');
// Its package.json "exports" hide the AMD build from require.resolve, so by path.
const monaco = path.join(__dirname, 'node_modules', 'monaco-editor');

// One `sslc lsp` child: requests are answered by id, diagnostics kept per URI.
class LspClient {
  constructor(sslc) {
    this.child = spawn(sslc, ['lsp'], { stdio: ['pipe', 'pipe', 'inherit'] });
    this.nextId = 0;
    this.pending = new Map();
    this.diagnostics = new Map();
    this.buffer = Buffer.alloc(0);
    this.child.stdout.on('data', (chunk) => this.receive(chunk));
    // A server that is gone fails every request, rather than leaving the page waiting.
    const fail = (why) => {
      this.failed = new Error(`sslc lsp (${sslc}): ${why}`);
      for (const { reject } of this.pending.values()) reject(this.failed);
      this.pending.clear();
    };
    this.child.on('error', (e) => fail(e.message));
    this.child.stdin.on('error', (e) => fail(e.message));
    this.child.on('exit', (code, signal) => fail(`exited (${signal || code})`));
  }

  // Lengths are in bytes, so the framing is parsed on Buffers, not strings.
  receive(chunk) {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    for (;;) {
      const end = this.buffer.indexOf('\r\n\r\n');
      if (end < 0) return;
      const length = Number(/Content-Length: (\d+)/i.exec(this.buffer.subarray(0, end).toString())[1]);
      if (this.buffer.length < end + 4 + length) return;
      const msg = JSON.parse(this.buffer.subarray(end + 4, end + 4 + length).toString());
      this.buffer = this.buffer.subarray(end + 4 + length);
      if (msg.id !== undefined && this.pending.has(msg.id)) {
        const { resolve, reject } = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        msg.error ? reject(new Error(JSON.stringify(msg.error))) : resolve(msg.result);
      } else if (msg.method === 'textDocument/publishDiagnostics') {
        this.diagnostics.set(msg.params.uri, msg.params.diagnostics);
      }
    }
  }

  send(msg) {
    const body = Buffer.from(JSON.stringify({ jsonrpc: '2.0', ...msg }));
    this.child.stdin.write(`Content-Length: ${body.length}\r\n\r\n`);
    this.child.stdin.write(body);
  }

  notify(method, params) {
    this.send({ method, params });
  }

  request(method, params) {
    if (this.failed) return Promise.reject(this.failed);
    const id = ++this.nextId;
    this.send({ id, method, params });
    return new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
  }

  async initialize(rootUri) {
    const result = await this.request('initialize', { processId: process.pid, rootUri, capabilities: {} });
    this.notify('initialized', {});
    return result;
  }

  async close() {
    await this.request('shutdown', null);
    this.notify('exit', null);
  }
}

// The Monarch tokenizer mirrors editors/vscode/syntaxes/ssl.tmLanguage.json, so the
// screenshot is coloured the way the VS Code extension colours it.
function page(file, uri, text) {
  const title = path.relative(root, file);
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>${title}</title>
<link rel="stylesheet" href="/monaco/min/vs/editor/editor.main.css">
<style>
  html, body { margin: 0; height: 100%; background: #1e1e1e; display: flex; flex-direction: column; }
  #tab { flex: none; background: #252526; color: #cccccc; font: 13px sans-serif; padding: 7px 14px;
         border-bottom: 1px solid #333; }
  #editor { flex: auto; min-height: 0; }
</style></head>
<body><div id="tab">${title} &mdash; sslc lsp</div><div id="editor"></div>
<script src="/monaco/min/vs/loader.js"></script>
<script>
const uri = ${JSON.stringify(uri)};
const text = ${JSON.stringify(text)};
require.config({ paths: { vs: '/monaco/min/vs' } });
require(['vs/editor/editor.main'], function () {
  monaco.languages.register({ id: 'ssl', extensions: ['.ssl'] });
  monaco.languages.setMonarchTokensProvider('ssl', {
    keywords: ['if', 'else', 'repeat', 'return', 'when', 'import', 'extends', 'fn', 'objective',
               'mixin', 'on', 'and', 'or', 'not'],
    storage: ['param', 'dim', 'input', 'const', 'learn', 'state', 'schedule', 'metric', 'views',
              'let', 'var'],
    constants: ['true', 'false', 'None', 'inf'],
    types: ['f32', 'int', 'bool'],
    builtins: ['loss', 'per_sample', 'epoch', 'epochs', 'base_lr', 'index', 'samples'],
    tokenizer: {
      root: [
        [/\\/\\/.*$/, 'comment'],
        [/"[^"\\n]*"?/, 'string'],
        [/[A-Za-z_]\\w*(?=\\s*\\()/, { cases: { '@keywords': 'keyword', '@default': 'function' } }],
        [/[A-Za-z_]\\w*/, { cases: { '@keywords': 'keyword', '@storage': 'storage', '@constants': 'constant',
                                      '@types': 'type', '@builtins': 'variable.predefined',
                                      '@default': 'identifier' } }],
        [/\\d+(\\.\\d*)?([eE][+-]?\\d+)?%?/, 'number'],
        [/\\*\\*|==|!=|<=|>=|->|\\+=|[-+*\\/%@<>=]/, 'operator'],
      ],
    },
  });
  monaco.editor.defineTheme('ssl-dark', {
    base: 'vs-dark', inherit: true,
    rules: [
      { token: 'storage', foreground: '569cd6' },
      { token: 'function', foreground: 'dcdcaa' },
      { token: 'variable.predefined', foreground: '9cdcfe' },
      { token: 'constant', foreground: '569cd6' },
      { token: 'type', foreground: '4ec9b0' },
      { token: 'operator', foreground: 'd4d4d4' },
    ],
    colors: {},
  });

  // LSP positions and Monaco's are the same but for 0- versus 1-based lines and columns.
  const toRange = (r) => r && new monaco.Range(r.start.line + 1, r.start.character + 1,
                                               r.end.line + 1, r.end.character + 1);
  monaco.languages.registerHoverProvider('ssl', {
    async provideHover(model, position) {
      const answer = await fetch('/hover', {
        method: 'POST',
        body: JSON.stringify({ line: position.lineNumber - 1, character: position.column - 1 }),
      }).then((r) => r.json());
      if (!answer) return null;
      const contents = [].concat(answer.contents).map((c) => typeof c === 'string' ? { value: c } : c);
      return { contents, range: toRange(answer.range) };
    },
  });

  const model = monaco.editor.createModel(text, 'ssl', monaco.Uri.parse(uri));
  window.editor = monaco.editor.create(document.getElementById('editor'), {
    model, theme: 'ssl-dark', fontSize: 15, lineHeight: 22, minimap: { enabled: false },
    scrollBeyondLastLine: false, renderLineHighlight: 'none', automaticLayout: true,
    // Scroll bars and the overview ruler would only clutter a still picture.
    scrollbar: { vertical: 'hidden', horizontal: 'hidden' }, overviewRulerLanes: 0,
    hover: { delay: 100 },
  });

  // The server's diagnostics for this file, as squiggles. Ready only once they are in:
  // setting markers later would hide a hover already showing.
  fetch('/diagnostics').then((r) => r.json()).then((ds) => {
    monaco.editor.setModelMarkers(model, 'sslc', ds.map((d) => ({
      ...toRange(d.range), message: d.message,
      severity: d.severity === 1 ? monaco.MarkerSeverity.Error : monaco.MarkerSeverity.Warning,
    })));
    window.editorReady = true;
  });
});
</script></body></html>`;
}

// Serves FILE at an http://127.0.0.1 URL (port 0: any free one); resolves to { url, lsp, close }.
async function start({ file, sslc = process.env.SSLC || path.join(root, 'target/debug/sslc'), port = 0 }) {
  file = fs.realpathSync(file);
  // A real file:// URI, so the server reads the file's imports from disk next to it.
  const uri = pathToFileURL(file).href;
  const text = fs.readFileSync(file, 'utf8');
  const lsp = new LspClient(sslc);
  const { capabilities } = await lsp.initialize(pathToFileURL(root).href);
  if (!capabilities.hoverProvider) throw new Error(`${sslc} lsp offers no hover`);
  lsp.notify('textDocument/didOpen', { textDocument: { uri, languageId: 'ssl', version: 1, text } });

  const types = { '.js': 'text/javascript', '.css': 'text/css', '.ttf': 'font/ttf' };
  const server = http.createServer(async (req, res) => {
    const reply = (status, type, body) => res.writeHead(status, { 'Content-Type': type }).end(body);
    try {
      if (req.url === '/') return reply(200, 'text/html', page(file, uri, text));
      if (req.url === '/favicon.ico') return reply(204, 'text/plain', '');
      if (req.url === '/hover' && req.method === 'POST') {
        let body = '';
        for await (const chunk of req) body += chunk;
        const position = JSON.parse(body);
        const hover = await lsp.request('textDocument/hover', { textDocument: { uri }, position });
        return reply(200, 'application/json', JSON.stringify(hover));
      }
      if (req.url === '/diagnostics') {
        // didOpen is a notification: ask for something first, so that the diagnostics it
        // published (before any later answer) have arrived.
        await lsp.request('textDocument/documentSymbol', { textDocument: { uri } });
        return reply(200, 'application/json', JSON.stringify(lsp.diagnostics.get(uri) || []));
      }
      if (req.url.startsWith('/monaco/')) {
        const target = path.join(monaco, path.normalize(decodeURIComponent(req.url.slice(7).split('?')[0])));
        if (!target.startsWith(monaco + path.sep)) return reply(403, 'text/plain', 'outside monaco-editor');
        return reply(200, types[path.extname(target)] || 'application/octet-stream', fs.readFileSync(target));
      }
      reply(404, 'text/plain', 'not found');
    } catch (e) {
      reply(500, 'text/plain', String(e));
    }
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${server.address().port}/`;
  const close = async () => {
    server.close();
    await lsp.close();
  };
  return { url, lsp, uri, text, close };
}

module.exports = { start, LspClient };

if (require.main === module) {
  const [file, port] = process.argv.slice(2);
  if (!file) {
    console.error('usage: node server.js FILE.ssl [PORT]');
    process.exit(2);
  }
  start({ file, port: Number(port) || 0 }).then(({ url }) => console.log(`serving ${file} at ${url}`));
}
