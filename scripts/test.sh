#!/usr/bin/env bash
# The test command (README, and .ci/run): installs what the tests need, then runs them.
# Under CI=true a missing dataset or library is a failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --all-targets "$@"
