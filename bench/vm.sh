#!/usr/bin/env bash
# Runs a command (a bench script) inside a QEMU guest of its own, so that the limits of the
# sandbox this machine's sessions run in do not bound it: there the open-file hard limit is
# 20,000 and cannot be raised (no CAP_SYS_RESOURCE), which caps every process at fewer than
# 20,000 connections. In the guest the command runs as root under a kernel of its own, with
# the open-file limit at $NOFILE and net.core.netdev_max_backlog at $BACKLOG (see below).
#
#   bench/vm.sh [--mem 12G] [--cpus 2] [--nofile 1048576] [--accel tcg|kvm]
#               [--netdev-backlog 1000000] -- COMMAND [ARGS...]
#   e.g. bench/vm.sh -- bench/conns.sh --counts 0,100000 --parallel 500
#
# The guest's root is this machine's root (shared over virtio 9p, read-write), with a fresh
# tmpfs on /tmp and /dev/shm, and only loopback networking; COMMAND runs in the current
# directory under bash, and its output and exit status are this script's. The kernel is
# Debian's (linux-image-amd64, downloaded once with apt-get into $CACHE/vm); the init is
# busybox. It runs under TCG (software emulation) unless --accel kvm: /dev/kvm exists on
# these machines but a nested guest hangs as its kernel starts. Under TCG a guest is 10-30
# times slower than the machine: use it for counts and sizes (memory per connection, how many
# connections), never for timings.
# Needs: qemu-system-x86 and busybox-static (installed if missing), apt access to Debian.
set -euo pipefail
MEM=12G CPUS=2 NOFILE=1048576 ACCEL=tcg BACKLOG=1000000
while (($#)); do
  case $1 in
    --mem) MEM=$2; shift 2 ;;
    --cpus) CPUS=$2; shift 2 ;;
    --nofile) NOFILE=$2; shift 2 ;;
    --accel) ACCEL=$2; shift 2 ;;
    --netdev-backlog) BACKLOG=$2; shift 2 ;;
    --) shift; break ;;
    -*) echo "unknown option: $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
(($#)) || { echo "usage: bench/vm.sh [--mem 12G] [--cpus 2] [--nofile N] [--accel tcg|kvm] [--netdev-backlog N] -- COMMAND [ARGS...]" >&2; exit 2; }
for v in "--cpus $CPUS" "--nofile $NOFILE" "--netdev-backlog $BACKLOG"; do
  [[ ${v#* } =~ ^[1-9][0-9]*$ ]] || { echo "${v% *}: a positive whole number, not '${v#* }'" >&2; exit 2; }
done
case $ACCEL in
  tcg) cpu=max ;;
  # qemu cannot set the host's IA32_ARCH_CAPABILITIES in a nested guest; leave it out.
  kvm) cpu=host,-arch-capabilities ;;
  *) echo "--accel: tcg or kvm" >&2; exit 2 ;;
esac
source "$(dirname "$0")/lib.sh"
need_tools qemu-system-x86_64
# The init needs a busybox that runs without a libc beside it.
if ! ldd /bin/busybox 2>&1 | grep -q 'not a dynamic'; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
fi

VM=$CACHE/vm
mkdir -p "$VM"
# The kernel and the modules that mount the host's root (virtio PCI, 9p over virtio).
if [[ ! -f $VM/vmlinuz || ! -f $VM/initrd.gz ]]; then
  pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)/\1/p' | head -1)
  [[ -n $pkg ]] || { apt-get update -qq && pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)/\1/p' | head -1); }
  echo "vm: fetching $pkg" >&2
  (cd "$WORK" && apt-get download "$pkg" 2>&1 | grep -v unsandboxed >&2 || true)
  dpkg-deb -x "$WORK/$pkg"_*.deb "$WORK/k"
  mods=$(echo "$WORK"/k/lib/modules/*/kernel)
  ir=$WORK/initrd
  mkdir -p "$ir"/{bin,mod,proc,sys,dev,mnt}
  cp /bin/busybox "$ir/bin/busybox"
  # In load order (each after what it depends on).
  for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
    drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci fs/netfs/netfs fs/fscache/fscache \
    net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p; do
    cp "$mods/$m.ko" "$ir/mod/"
    echo "${m##*/}" >>"$ir/mod/order"
  done
  cat >"$ir/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mod/order); do insmod /mod/$m.ko || echo "vm: insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576,cache=loose host /mnt || echo "vm: 9p mount failed"
mount -t proc proc /mnt/proc; mount -t sysfs sys /mnt/sys; mount -t devtmpfs dev /mnt/dev
mkdir -p /mnt/dev/pts /mnt/dev/shm; mount -t devpts devpts /mnt/dev/pts; mount -t tmpfs shm /mnt/dev/shm
mount -t tmpfs tmp /mnt/tmp
ip link set lo up
run=$(sed -n 's/.*vmrun=\([^ ]*\).*/\1/p' /proc/cmdline)
chroot /mnt /usr/bin/env -i HOME=/root TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/bash "$run"
echo "vm: exit $?"
poweroff -f
EOF
  chmod +x "$ir/init"
  (cd "$ir" && find . | /bin/busybox cpio -o -H newc 2>/dev/null) | gzip -1 >"$VM/initrd.gz"
  cp "$WORK"/k/boot/vmlinuz-* "$VM/vmlinuz"
fi

# The command, as a script the guest finds through the shared root ($CACHE is not under /tmp,
# which the guest replaces). Its output goes to a file there, not to the serial console.
run=$VM/run-$$.sh out=$VM/run-$$.out
on_exit "rm -f '$run' '$out'"
{
  echo "ulimit -Hn $NOFILE && ulimit -n $NOFILE"
  echo "echo $NOFILE > /proc/sys/fs/nr_open 2>/dev/null || true"
  # Loopback packets wait in a per-CPU backlog until the (emulated, slow) CPU takes them;
  # at the default 1,000 the keepalive probes of 100,000 idle connections overflowed it
  # (seen: 250,199 packets dropped, and 31,597 connections aborted by keepalive after six
  # unanswered probes, TcpExt.TCPAbortOnTimeout). A machine's own kernel keeps up.
  echo "echo $BACKLOG > /proc/sys/net/core/netdev_max_backlog"
  printf 'cd %q\n' "$PWD"
  printf '%q ' "$@"
  printf '>%q 2>&1\n' "$out"
} >"$run"
: >"$out"
tail -f "$out" --pid=$$ 2>/dev/null &
console=$(qemu-system-x86_64 -accel "$ACCEL" -cpu "$cpu" -smp "$CPUS" -m "$MEM" -kernel "$VM/vmlinuz" \
  -initrd "$VM/initrd.gz" -append "console=ttyS0 quiet loglevel=0 vmrun=$run" -nographic \
  -no-reboot -net none -virtfs "local,path=/,mount_tag=host,security_model=none,multidevs=remap" \
  2>&1 | tr -d '\r')
sleep 0.5
rc=$(grep -o 'vm: exit [0-9]*' <<<"$console" | tail -1 | cut -d' ' -f3)
if [[ -z $rc ]]; then
  echo "vm: the guest ended without the command's exit status; its console:" >&2
  tail -30 <<<"$console" >&2
  exit 1
fi
grep -o 'vm: .*' <<<"$console" | grep -v '^vm: exit' >&2 || true
exit "$rc"
