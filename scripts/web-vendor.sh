#!/usr/bin/env bash
# Refreshes the dashboard's one third-party file, Apache ECharts, from the npm registry:
# the pinned version's dist/echarts.min.js (checked against the registry's integrity hash)
# with its LICENSE and NOTICE, into src/web/vendor/. The binary embeds what is there, so a
# build needs neither npm nor the network; run this only to change the version.
set -euo pipefail
VERSION=${1:-6.1.0}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "echarts@$VERSION" >/dev/null)
want=$(npm view "echarts@$VERSION" dist.integrity)
got="sha512-$(openssl dgst -sha512 -binary "$work/echarts-$VERSION.tgz" | base64 -w0)"
[ "$want" = "$got" ] || { echo "echarts-$VERSION.tgz: integrity $got, the registry says $want" >&2; exit 1; }
tar -xzf "$work/echarts-$VERSION.tgz" -C "$work"
rm -f src/web/vendor/echarts-*.min.js
cp "$work/package/dist/echarts.min.js" "src/web/vendor/echarts-$VERSION.min.js"
cp "$work/package/LICENSE" src/web/vendor/echarts-LICENSE
cp "$work/package/NOTICE" src/web/vendor/echarts-NOTICE
echo "src/web/vendor/echarts-$VERSION.min.js (update ECHARTS in src/web/mod.rs)"
