#!/usr/bin/env bash
# Runs sandbox-runner tests on a real cgroup v2 kernel in a virtual machine, from a cgroup v1 (or
# hybrid) host: Debian's kernel boots under QEMU with the host's root file system shared read-only
# over 9p, cgroup2 mounted on /sys/fs/cgroup (nothing else), and the tests start in the non-root
# cgroup /init that holds processes, as a container's do, so the runner must move itself into a
# leaf before it can enable controllers.
#
#   sudo sandbox-runner/bench/cgroup_v2_vm.sh [TEST PATHS...]     # from the repository root
#
# Needs root, the venv (make install), and Debian's packages qemu-system-x86 and busybox-static
# (installed here if missing). KVM is used when it works, else QEMU's emulator (about 20x slower:
# tests with tight wall-clock limits can time out). Output: $WORK/console.log and $WORK/out/pytest.log.
set -euo pipefail
REPO=$(pwd)
WORK=${WORK:-/tmp/flywheel-cgroup-v2-vm}
KVER=${KVER:-6.1.0-57-amd64}
TESTS=${*:-sandbox-runner/tests/test_cgroups.py sandbox-runner/tests/test_abuse.py}
ACCEL=${ACCEL:-tcg}  # kvm where nested virtualisation works
mkdir -p "$WORK/out" "$WORK/initrd/bin" "$WORK/initrd/mods" "$WORK/initrd/newroot" "$WORK/initrd/proc" \
  "$WORK/initrd/sys" "$WORK/initrd/dev"
command -v qemu-system-x86_64 >/dev/null && command -v busybox >/dev/null \
  || apt-get install -y --no-install-recommends qemu-system-x86 busybox-static
cd "$WORK"
if [ ! -f "k/boot/vmlinuz-$KVER" ]; then
  apt-get download "linux-image-$KVER"
  dpkg -x linux-image-"$KVER"_*.deb k
fi
cp /usr/bin/busybox initrd/bin/
MODS="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci 9pnet 9pnet_virtio netfs fscache 9p"
for m in $MODS; do cp "$(find "k/lib/modules/$KVER" -name "$m.ko")" initrd/mods/; done
cat > initrd/init <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $MODS; do insmod /mods/\$m.ko || echo "insmod \$m failed"; done
N=/newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot \$N || poweroff -f
mount -t proc proc \$N/proc; mount -t sysfs sys \$N/sys; mount -t devtmpfs dev \$N/dev
mount -t devpts devpts \$N/dev/pts; mount -t tmpfs shm \$N/dev/shm
mount -t cgroup2 cgroup2 \$N/sys/fs/cgroup
mount -t tmpfs -o size=2g tmp \$N/tmp; mount -t tmpfs run \$N/run
mkdir -p \$N/tmp/out; mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out \$N/tmp/out
ip link set lo up
[ -f /proc/sys/kernel/unprivileged_userns_clone ] && echo 1 > /proc/sys/kernel/unprivileged_userns_clone
mkdir \$N/sys/fs/cgroup/init
echo "+memory +pids +cpu" > \$N/sys/fs/cgroup/cgroup.subtree_control
echo "kernel \$(uname -r); root cgroup controllers: \$(cat \$N/sys/fs/cgroup/cgroup.controllers)"
exec switch_root \$N /bin/bash /tmp/out/guest-init.sh
EOF
chmod +x initrd/init
# pid 1 after switch_root (not a chroot: the kernel refuses user namespaces to a chrooted process).
cat > out/guest-init.sh <<EOF
echo \$\$ > /sys/fs/cgroup/init/cgroup.procs
cd $REPO && HOME=/tmp PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin \
  timeout 1800 .venv/bin/python -m pytest $TESTS -q -p no:cacheprovider -rfEs > /tmp/out/pytest.log 2>&1
echo "pytest exit \$?; runner cgroups left: \$(find /sys/fs/cgroup/init -mindepth 1 -type d | tr '\n' ' ')"
sync; echo o > /proc/sysrq-trigger; sleep 30
EOF
(cd initrd && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > initrd.gz
cpu=max; [ "$ACCEL" = kvm ] && cpu=host,-arch-capabilities
timeout 3600 qemu-system-x86_64 -accel "$ACCEL" -cpu "$cpu" -smp 2 -m 3072 -nographic -no-reboot \
  -kernel "k/boot/vmlinuz-$KVER" -initrd initrd.gz -append "console=ttyS0 panic=-1 loglevel=4" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap \
  -virtfs local,path="$WORK/out",mount_tag=out,security_model=passthrough,multidevs=remap \
  > console.log 2>&1 || true
grep -a -E "^kernel|pytest exit" console.log || true
tail -n 15 out/pytest.log
