#!/bin/bash
# PID 1 of a test box's private namespaces (tests/support/sysbox.py): prepare the mounts, then
# exec systemd with a minimal target. Everything systemd or the tests write lands on tmpfs; the
# host's /tmp, /run, journal, /etc/passwd and units are never touched (../shared/SYSTEMD-TESTING.md).
set -eu
target=rip-test.target
mount -t proc -o nosuid,nodev,noexec proc /proc
mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys   # no host sysctl changes
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys 2>/dev/null || mount -o remount,bind,ro /sys
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup        # rooted at our cgroup ns
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
# The host paths under /tmp and /var/tmp that the box must still see (a checkout there and its
# virtualenv: RIP_BOX_KEEP, from sysbox.kept()) are held aside, then put back over the tmpfs.
n=0
for path in ${RIP_BOX_KEEP:-}; do
  mkdir -p "/run/rip-test/keep/$n" && mount --rbind "$path" "/run/rip-test/keep/$n"; n=$((n + 1))
done
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp                    # PrivateTmp= lives here
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /var/tmp                # and here (systemd-private-*)
n=0
for path in ${RIP_BOX_KEEP:-}; do
  mkdir -p "$path" && mount --move "/run/rip-test/keep/$n" "$path"; n=$((n + 1))
done
mount -t tmpfs -o mode=755 tmpfs /etc/systemd/system                   # hides host enablement
# rip's units have PrivateTmp=, a /tmp of their own: the kept paths are bound into it too.
if [ -n "${RIP_BOX_KEEP:-}" ]; then
  for unit in rip@ rip-balancer@ rip-worker@; do
    mkdir -p "/etc/systemd/system/$unit.service.d"
    { echo "[Service]"; for path in $RIP_BOX_KEEP; do echo "BindReadOnlyPaths=$path"; done; } \
      > "/etc/systemd/system/$unit.service.d/40-rip-test-keep.conf"
  done
fi
mount -t tmpfs -o mode=2755 tmpfs /var/log/journal
# rip's own directories: the mount points are created once on the host (empty, as the package
# would), their contents stay in the box.
for d in /etc/rip /var/lib/rip /var/log/rip /var/cache/rip; do
  mkdir -p "$d" && mount -t tmpfs -o mode=755 tmpfs "$d"
done
# the unprivileged `rip` user of the units, as sysusers.d would create it: in the box only
mkdir -p /run/rip-test
for f in passwd group shadow gshadow; do cp -a /etc/$f /run/rip-test/$f; done
grep -q '^rip:' /run/rip-test/group || echo 'rip:x:990:' >> /run/rip-test/group
grep -q '^rip:' /run/rip-test/passwd ||
  echo 'rip:x:990:990:rip-server:/var/lib/rip:/usr/sbin/nologin' >> /run/rip-test/passwd
for f in passwd group shadow gshadow; do mount --bind /run/rip-test/$f /etc/$f; done
mkdir -p /run/systemd/journald.conf.d /run/systemd/system-generators
# A low rate limit (500 entries per 30 s per unit, times 3 or 4 with the free space): a unit that
# logs per request and is not exempt from it loses entries within seconds of load.
printf '[Journal]\nStorage=volatile\nReadKMsg=no\nRateLimitBurst=500\n' > /run/systemd/journald.conf.d/rip-test.conf
for g in /lib/systemd/system-generators/*; do ln -sf /dev/null "/run/systemd/system-generators/${g##*/}"; done
cd /etc/systemd/system
for u in /lib/systemd/system/{sysinit,sockets,timers}.target.wants/*; do
  n=${u##*/}
  case "$n" in systemd-journald.service|systemd-journald.socket|systemd-journald-dev-log.socket|dbus.socket) continue;; esac
  ln -sf /dev/null "$n"
done
for n in systemd-tmpfiles-clean.service systemd-remount-fs.service systemd-update-utmp-runlevel.service \
         systemd-journald-audit.socket tmp.mount systemd-sysusers.service; do ln -sf /dev/null "$n"; done
cat > $target <<'UNIT'
[Unit]
Description=rip test box (dbus + journald only)
Requires=dbus.socket dbus.service systemd-journald.service
After=dbus.socket dbus.service systemd-journald.service
AllowIsolate=yes
UNIT
mkdir -p $target.wants
cd /
exec /lib/systemd/systemd --system --unit=$target --log-target=journal --show-status=no
