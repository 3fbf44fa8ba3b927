#!/usr/bin/env bash
# Packages the VS Code extension in editors/vscode into target/vsix/sslc-ssl-<version>.vsix.
#
# The build happens in a copy under target/vsix/build, so node_modules never lands in the
# source tree, and npm downloads are cached in target/npm-cache (git-ignored), which a rerun
# reuses. vsce itself is a devDependency, pinned by package-lock.json.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/editors/vscode"
out="$root/target/vsix"
build="$out/build"
cache="$root/target/npm-cache"

version="$(node -p "require('$src/package.json').version")"
vsix="$out/sslc-ssl-$version.vsix"

# A fresh copy of the sources each time (a stale file left in build/ would end up in the
# package), but node_modules is kept while the lock file is unchanged: unpacking its ~250
# packages from the cache takes ~15 s, packaging ~3 s.
mkdir -p "$build" "$cache"
find "$build" -mindepth 1 -maxdepth 1 ! -name node_modules -exec rm -rf {} +
(cd "$src" && tar --exclude=node_modules --exclude='*.vsix' -cf - .) | (cd "$build" && tar -xf -)

cd "$build"
stamp=node_modules/.sslc-package-lock.json
if ! cmp -s package-lock.json "$stamp"; then
    # --prefer-offline: a warm cache answers without asking the registry whether it is stale.
    npm ci --cache "$cache" --prefer-offline --no-audit --no-fund --loglevel=error
    cp package-lock.json "$stamp"
fi
npx --no-install vsce package --allow-missing-repository --skip-license --out "$vsix"

# The package must hold the manifest and the grammar; say so loudly if not.
listing="$(unzip -l "$vsix")"
for f in extension/package.json extension/syntaxes/ssl.tmLanguage.json extension/extension.js \
         extension/node_modules/vscode-languageclient/package.json; do
    grep -q " $f\$" <<<"$listing" || { echo "vsix.sh: $f missing from $vsix" >&2; exit 1; }
done
echo "vsix.sh: $vsix ($(stat -c %s "$vsix") bytes)"
