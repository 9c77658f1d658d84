#!/usr/bin/env bash
# check-deb.sh: build the .deb and check, for real, that it installs and runs
# like a standard Debian service. Run as root on Debian 12 (CI runs it from
# ./qwengate-dev test, after the trial runs):
#
#   tests/packaging/check-deb.sh            build, install, run, upgrade, purge
#   tests/packaging/check-deb.sh --keep     leave the package installed and the
#                                           work directory in place
#   QWENGATE_DEB_NOCHECK=1 / QWENGATE_DEB_AUTOPKGTEST=0   skip the build-time
#                                           suite / the autopkgtest (quicker)
#
# Every check prints "ok - ..." or "not ok - ..."; the last line is
# "N passed, M failed" and the exit status is non-zero when one failed.
#
# What it does, in order: dpkg-buildpackage -us -uc -b in a copy of the
# source (the package build runs the trial suite on Debian's libraries);
# lintian (zero errors, zero unoverridden warnings); apt-get install
# ./qwengate_*.deb; files, user, modes and the plugin cache where Debian
# expects them; twistd3 qwengate --check-config on the shipped config;
# systemd-analyze security --offline=true (exposure <= 2.0); an operator's
# edit of the conffile; the daemon run exactly as the unit's ExecStart says,
# as the unit's User (systemd is not PID 1 in CI) against the emulator:
# /health over https, chat streamed and not with a key made by the installed
# qwengate-keys, SIGHUP loads a new key; SIGTERM stops it; the autopkgtest
# (debian/tests/unit) against the installed package; an upgrade to a higher
# version keeps the conffile edit and the keys file (owner, group, mode);
# apt-get purge removes what the package made and keeps the system user.
#
# It installs and then purges the package system-wide; it refuses to start
# when port 18789 (the shipped config's) is taken.
set -uo pipefail

# Debian's own tools and python3, never a pyenv or venv interpreter first on
# PATH (pybuild runs whatever "python3.11" is found first).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KEEP=0
[[ ${1:-} == --keep ]] && KEEP=1

PASSED=0
FAILED=0
WORK=
DAEMON_PID=
EMULATOR_PID=

ok() {
    PASSED=$((PASSED + 1))
    printf 'ok - %s\n' "$*"
}
not_ok() {
    FAILED=$((FAILED + 1))
    printf 'not ok - %s\n' "$*"
}
# check NAME COMMAND...: one check from a command's exit status.
check() {
    local name=$1
    shift
    if "$@"; then ok "$name"; else not_ok "$name"; fi
}
note() { printf '# %s\n' "$*"; }

summary() {
    printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
}

# Stop a process this script started, by its pid only.
stop_pid() {
    local pid=$1 i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    stop_pid "$DAEMON_PID"
    stop_pid "$EMULATOR_PID"
    if ((!KEEP)); then
        if dpkg-query -W -f='${Status}' qwengate 2>/dev/null | grep -q 'ok installed\|config-files'; then
            apt-get purge -y -q qwengate >/dev/null 2>&1 || true
        fi
        [[ -n $WORK ]] && rm -rf "$WORK"
    else
        note "kept: the package stays installed; work directory $WORK"
    fi
}
trap cleanup EXIT

if [[ $(id -u) -ne 0 ]]; then
    echo "check-deb.sh: must run as root (it installs and purges the package)" >&2
    not_ok "running as root"
    summary
    exit 1
fi

port_free() {
    ! ss -Htln "sport = :$1" 2>/dev/null | grep -q .
}

# Wait up to $2 tenths of a second for command "${@:3}" to succeed.
wait_until() {
    local tenths=$1 i
    shift
    for ((i = 0; i < tenths; i++)); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

if dpkg-query -W -f='${Status}' qwengate 2>/dev/null | grep -q 'installed\|config-files'; then
    note "purging a qwengate left installed by an earlier run"
    apt-get purge -y -q qwengate >/dev/null 2>&1
fi

WORK=$(mktemp -d /tmp/qwengate-deb.XXXXXX)
chmod 0755 "$WORK" # apt's _apt user reads the .deb from here

# --- build --------------------------------------------------------------------

VERSION=$(dpkg-parsechangelog -l "$REPO_ROOT/debian/changelog" -S Version)
SRC=$WORK/qwengate-$VERSION
mkdir -p "$SRC"
# The files git knows (plus uncommitted edits), or the tree minus local junk.
if git -C "$REPO_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$REPO_ROOT" && git ls-files -z --cached --others --exclude-standard |
        xargs -0 -r cp --parents -t "$SRC" 2>/dev/null)
else
    (cd "$REPO_ROOT" && tar --exclude=./.venv --exclude=./state --exclude=./.git -cf - .) |
        tar -C "$SRC" -xf -
fi
note "building qwengate $VERSION in $SRC (log: build.log)"
started=$SECONDS
# QWENGATE_DEB_NOCHECK=1 skips the build-time suite (a quicker re-check).
if [[ ${QWENGATE_DEB_NOCHECK:-} == 1 ]]; then
    export DEB_BUILD_OPTIONS="nocheck${DEB_BUILD_OPTIONS:+ $DEB_BUILD_OPTIONS}"
fi
if (cd "$SRC" && dpkg-buildpackage -us -uc -b) >"$WORK/build.log" 2>&1; then
    ok "dpkg-buildpackage -us -uc -b ($((SECONDS - started)) s, trial suite on Debian's libraries included)"
else
    tail -n 60 "$WORK/build.log"
    not_ok "dpkg-buildpackage -us -uc -b (tail of the log above)"
    summary
    exit 1
fi
grep -E '^(Ran|PASSED|FAILED)' "$WORK/build.log" | sed 's/^/# build-time trial: /'
DEB=$WORK/qwengate_${VERSION}_all.deb
check "the .deb is Architecture: all" test "$(dpkg-deb -f "$DEB" Architecture)" = all

contents=$(dpkg-deb -c "$DEB")
check "no dropin.cache in the .deb" bash -c '! grep -q dropin.cache <<<"$1"' _ "$contents"
check "no twisted/__init__.py or twisted/plugins/__init__.py in the .deb" \
    bash -c '! grep -Eq "/twisted/(plugins/)?__init__\.py$" <<<"$1"' _ "$contents"
check "no private key and no tests in the .deb" \
    bash -c '! grep -Eiq "(privkey|\.key$|-key\.pem$|/tests/)" <<<"$1"' _ "$contents"

lintian_out=$(lintian --fail-on none "$DEB" 2>&1)
printf '%s\n' "$lintian_out" | sed 's/^/# lintian: /'
check "lintian: zero errors" bash -c '! grep -q "^E: " <<<"$1"' _ "$lintian_out"
check "lintian: every warning fixed or overridden" bash -c '! grep -q "^W: " <<<"$1"' _ "$lintian_out"

# A higher version of the same package, for the upgrade check: the same
# files under version $VERSION+ci1 (repacked; building twice costs minutes).
UPGRADE_DEB=$WORK/qwengate_${VERSION}+ci1_all.deb
mkdir "$WORK/repack"
dpkg-deb -R "$DEB" "$WORK/repack/root"
sed -i "s/^Version: .*/Version: ${VERSION}+ci1/" "$WORK/repack/root/DEBIAN/control"
dpkg-deb --root-owner-group -b "$WORK/repack/root" "$UPGRADE_DEB" >/dev/null

# --- install --------------------------------------------------------------------

if apt-get install -y -q "$DEB" >"$WORK/install.log" 2>&1; then
    ok "apt-get install ./qwengate_${VERSION}_all.deb (dependencies from Debian)"
else
    cat "$WORK/install.log"
    not_ok "apt-get install ./qwengate_${VERSION}_all.deb"
    summary
    exit 1
fi
grep -i 'self-signed' "$WORK/install.log" | sed 's/^/# postinst: /'

SITE=/usr/lib/python3/dist-packages
UNIT=/lib/systemd/system/qwengate.service
check "twistd3 is /usr/bin/twistd3" test -x /usr/bin/twistd3
check "qwen_twist in $SITE" test -f $SITE/qwen_twist/tap.py
check "the plugin in $SITE/twisted/plugins" test -f $SITE/twisted/plugins/qwengate_plugin.py
check "qwengate-keys on PATH" test -x /usr/bin/qwengate-keys
if grep -q 'qwengate-audit' "$REPO_ROOT/setup.py"; then
    check "qwengate-audit on PATH" test -x /usr/bin/qwengate-audit
fi
check "the unit in $UNIT" test -f $UNIT
WANTS=/etc/systemd/system/multi-user.target.wants/qwengate.service
check "the unit is enabled on install (dh_installsystemd)" test -L "$WANTS"
check "/etc/qwengate/qwengate.yaml is a conffile" \
    bash -c 'dpkg-query -W -f="\${Conffiles}" qwengate | grep -q "^ /etc/qwengate/qwengate.yaml "'
check "the nginx site in /usr/share/doc/qwengate/examples" \
    test -f /usr/share/doc/qwengate/examples/nginx/qwengate
check "system user _qwengate (nologin, home /var/lib/qwengate)" bash -c '
    entry=$(getent passwd _qwengate) || exit 1
    IFS=: read -r _ _ uid _ _ home shell <<<"$entry"
    ((uid < 1000)) && [[ $home == /var/lib/qwengate && $shell == */nologin ]]'
stat_is() { [[ $(stat -c '%U:%G %a' "$1" 2>/dev/null) == "$2" ]]; }
check "/etc/qwengate/keys.yaml is root:_qwengate 640" stat_is /etc/qwengate/keys.yaml "root:_qwengate 640"
check "/var/lib/qwengate is _qwengate:_qwengate 750" stat_is /var/lib/qwengate "_qwengate:_qwengate 750"
check "/var/log/qwengate (audit log) is _qwengate:_qwengate 750" stat_is /var/log/qwengate "_qwengate:_qwengate 750"
check "self-signed private key is root:_qwengate 640" stat_is /etc/qwengate/tls/privkey.pem "root:_qwengate 640"
check "self-signed certificate names 127.0.0.1 and localhost" bash -c '
    text=$(openssl x509 -noout -ext subjectAltName -in /etc/qwengate/tls/fullchain.pem) &&
    grep -q "IP Address:127.0.0.1" <<<"$text" && grep -q "DNS:localhost" <<<"$text"'
check "python3-twisted's trigger rebuilt the plugin cache with qwengate" \
    bash -c "grep -aq qwengate_plugin $SITE/twisted/plugins/dropin.cache"
check "twistd3 --help lists qwengate" bash -c 'cd / && help=$(twistd3 --help) && grep -q "^ *qwengate " <<<"$help"'

check "twistd3 qwengate --check-config accepts the shipped config (as _qwengate)" \
    bash -c 'cd /var/lib/qwengate && runuser -u _qwengate -- twistd3 qwengate \
        --config /etc/qwengate/qwengate.yaml --check-config | grep -q "configuration OK"'

exposure=$(systemd-analyze security --offline=true "$UNIT" 2>/dev/null |
    sed -n 's/.*Overall exposure level for qwengate.service: \([0-9.]*\).*/\1/p')
check "systemd-analyze security --offline=true: exposure ${exposure:-?} <= 2.0" \
    awk -v e="${exposure:-99}" 'BEGIN { exit !(e <= 2.0) }'

# --- run it as the unit says ------------------------------------------------------

if ! port_free 18789; then
    not_ok "port 18789 is free for the daemon (something else listens there)"
    summary
    exit 1
fi

# The emulator from the installed package, on a free port.
(cd / && exec python3 -m qwen_twist.emulator --host 127.0.0.1 --port 0) >"$WORK/emulator.log" 2>&1 &
EMULATOR_PID=$!
wait_until 100 grep -qs 'listening on http' "$WORK/emulator.log"
UPSTREAM=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$WORK/emulator.log" | head -n1)
check "the emulator (python3 -m qwen_twist.emulator, installed) answers at ${UPSTREAM:-?}" \
    test -n "$UPSTREAM"

# An operator's edit of the conffile: bind loopback, point at the emulator.
sed -i -e "s|^  address: 0.0.0.0$|  address: 127.0.0.1|" \
    -e "s|^  url: http://127.0.0.1:11434$|  url: $UPSTREAM|" /etc/qwengate/qwengate.yaml
check "operator edit of /etc/qwengate/qwengate.yaml applied" \
    grep -q "^  url: $UPSTREAM\$" /etc/qwengate/qwengate.yaml

KEY1=$(qwengate-keys --file /etc/qwengate/keys.yaml add --id ci-one --owner ci 2>/dev/null)
check "installed qwengate-keys mints a key" test -n "$KEY1"
check "keys.yaml stays root:_qwengate 640 after qwengate-keys add" \
    stat_is /etc/qwengate/keys.yaml "root:_qwengate 640"

EXEC_START=$(sed -n 's/^ExecStart=//p' "$UNIT")
UNIT_USER=$(sed -n 's/^User=//p' "$UNIT")
UNIT_DIR=$(sed -n 's/^WorkingDirectory=//p' "$UNIT")
note "ExecStart=$EXEC_START (User=$UNIT_USER, WorkingDirectory=$UNIT_DIR)"
read -r -a argv <<<"$EXEC_START"
(cd "${UNIT_DIR:-/}" && exec setpriv --reuid="$UNIT_USER" --regid="$UNIT_USER" --init-groups \
    --no-new-privs --inh-caps=-all -- "${argv[@]}") >"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!

CURL=(curl -sS --max-time 20 --cacert /etc/qwengate/tls/fullchain.pem)
health() { "${CURL[@]}" -o /dev/null -w '%{http_code}' https://127.0.0.1:18789/health 2>/dev/null | grep -q 200; }
if wait_until 300 health; then
    ok "the daemon answers https://127.0.0.1:18789/health (certificate verified)"
else
    cat "$WORK/daemon.log"
    not_ok "the daemon answers https://127.0.0.1:18789/health"
fi
check "the daemon runs as $UNIT_USER" bash -c \
    "[[ \$(stat -c %U /proc/$DAEMON_PID) == $UNIT_USER ]] && grep -q '^NoNewPrivs:[[:space:]]*1' /proc/$DAEMON_PID/status"

chat() { # chat KEY STREAM -> body on stdout, status in the last line
    "${CURL[@]}" -N -w '\n%{http_code}' https://127.0.0.1:18789/v1/chat/completions \
        -H "Authorization: Bearer $1" -H 'Content-Type: application/json' \
        -d "{\"model\": \"qwen3:8b\", \"stream\": $2, \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}"
}
reply=$(chat "$KEY1" false)
check "chat (non-stream) with the minted key: 200 and an answer" python3 -c '
import json, sys
body, status = sys.argv[1].rsplit("\n", 1)
assert status == "200", status
assert json.loads(body)["choices"][0]["message"]["content"]
' "$reply"
reply=$(chat "$KEY1" true)
check "chat (stream) with the minted key: SSE chunks ending in [DONE]" python3 -c '
import json, sys
body, status = sys.argv[1].rsplit("\n", 1)
assert status == "200", status
data = [l[6:] for l in body.splitlines() if l.startswith("data: ")]
assert data[-1] == "[DONE]", data[-1:]
text = "".join(json.loads(d)["choices"][0]["delta"].get("content") or ""
               for d in data[:-1] if json.loads(d)["choices"])
assert len(data) > 3 and text, data
' "$reply"

KEY2=$(qwengate-keys --file /etc/qwengate/keys.yaml add --id ci-two --owner ci 2>/dev/null)
check "keys.yaml stays root:_qwengate 640 after a second rewrite" \
    stat_is /etc/qwengate/keys.yaml "root:_qwengate 640"
status_of() { chat "$1" false | tail -n1; }
check "a key added after start is refused before the reload (401)" test "$(status_of "$KEY2")" = 401
kill -HUP "$DAEMON_PID"
key2_works() { [[ $(status_of "$KEY2") == 200 ]]; }
check "SIGHUP (ExecReload) loads the new key" wait_until 100 key2_works
check "... without a restart (same process)" kill -0 "$DAEMON_PID"
check "no 'Unable to write to plugin cache' in the daemon's log" \
    bash -c "! grep -q 'Unable to write to plugin cache' '$WORK/daemon.log'"

kill -TERM "$DAEMON_PID"
stopped=1
for ((i = 0; i < 450; i++)); do
    kill -0 "$DAEMON_PID" 2>/dev/null || { stopped=0; break; }
    sleep 0.1
done
wait "$DAEMON_PID" 2>/dev/null
rc=$?
DAEMON_PID=
# twistd drains, stops, then ends itself with the signal it got (status
# 128+15 here), which systemd counts as a clean stop.
check "SIGTERM (systemctl stop) drains and ends the daemon (status $rc)" \
    bash -c "[[ $stopped == 0 && ( $rc == 0 || $rc == 143 ) ]] && grep -q 'Server Shut Down' '$WORK/daemon.log'"
stop_pid "$EMULATOR_PID"
EMULATOR_PID=
AUDIT=/var/log/qwengate/audit.log
# Checked after the stop, when every record is surely written.
check "the audit log is $AUDIT, owned by $UNIT_USER, with the calls and never a key" bash -c \
    "[[ \$(stat -c %U $AUDIT) == $UNIT_USER ]] && (( \$(wc -l <$AUDIT) >= 4 )) &&
     ! grep -qF -e '$KEY1' -e '$KEY2' $AUDIT"
check "qwengate-audit reads it (keys: ci-one)" bash -c \
    "qwengate-audit --file $AUDIT keys 2>&1 | grep -q ci-one"

# --- autopkgtest -----------------------------------------------------------------

if [[ ${QWENGATE_DEB_AUTOPKGTEST:-1} == 1 ]]; then
    mkdir "$WORK/autopkgtest"
    started=$SECONDS
    if (cd "$SRC" && AUTOPKGTEST_TMP=$WORK/autopkgtest sh debian/tests/unit) >"$WORK/autopkgtest.log" 2>&1; then
        ok "autopkgtest debian/tests/unit: the suite against the installed package ($((SECONDS - started)) s)"
    else
        tail -n 60 "$WORK/autopkgtest.log"
        not_ok "autopkgtest debian/tests/unit (tail of the log above)"
    fi
    grep -E '^(Ran|PASSED|FAILED)' "$WORK/autopkgtest.log" | sed 's/^/# autopkgtest trial: /'
fi

# --- upgrade ----------------------------------------------------------------------

if apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "$UPGRADE_DEB" >"$WORK/upgrade.log" 2>&1; then
    ok "upgrade to ${VERSION}+ci1 with apt-get install"
else
    cat "$WORK/upgrade.log"
    not_ok "upgrade to ${VERSION}+ci1 with apt-get install"
fi
check "the upgrade is installed" test "$(dpkg-query -W -f='${Version}' qwengate)" = "${VERSION}+ci1"
check "the upgrade kept the operator's conffile edit" grep -q "^  url: $UPSTREAM\$" /etc/qwengate/qwengate.yaml
check "the upgrade kept the keys (2) and keys.yaml root:_qwengate 640" bash -c \
    '[[ $(qwengate-keys --file /etc/qwengate/keys.yaml list | grep -c "ci-") == 2 ]] &&
     [[ $(stat -c "%U:%G %a" /etc/qwengate/keys.yaml) == "root:_qwengate 640" ]]'
check "the upgrade kept the certificate" stat_is /etc/qwengate/tls/privkey.pem "root:_qwengate 640"

if ((KEEP)); then
    summary
    ((FAILED == 0))
    exit
fi

# --- purge --------------------------------------------------------------------------

if apt-get purge -y -q qwengate >"$WORK/purge.log" 2>&1; then
    ok "apt-get purge qwengate"
else
    cat "$WORK/purge.log"
    not_ok "apt-get purge qwengate"
fi
check "purge: no package state left" bash -c '! dpkg-query -W qwengate >/dev/null 2>&1'
for path in /etc/qwengate /var/lib/qwengate /var/log/qwengate $UNIT $SITE/qwen_twist \
    $SITE/twisted/plugins/qwengate_plugin.py /usr/bin/qwengate-keys; do
    check "purge removed $path" test ! -e "$path"
done
check "purge: the plugin cache no longer lists qwengate" \
    bash -c "! grep -aq qwengate_plugin $SITE/twisted/plugins/dropin.cache 2>/dev/null"
check "purge: the unit is no longer enabled" test ! -e "$WANTS"
check "purge kept the system user _qwengate (Debian practice)" bash -c 'getent passwd _qwengate >/dev/null'

summary
((FAILED == 0))
