#!/bin/busybox sh
# L1 init of the tinyvmm lab (runs under QEMU TCG with an emulated SVM CPU).
# Mounts the basics, loads kvm-amd (nested, hardware-style /dev/kvm), runs /lab/scenario.sh and
# reports its exit status as "LAB status=N", then powers off so QEMU exits.
# Report lines start with "LAB " and carry key=value pairs; the host parses only those.
export PATH=/lab/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /tmp /run /root /var/tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
echo "LAB l1.init_uptime=$(cut -d' ' -f1 /proc/uptime)"
# insmod by path: busybox modprobe spends ~0.5 s (virtual) parsing modules.dep under TCG.
k=/lib/modules/$(uname -r)/kernel
for m in virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd; do
    insmod "$k/$m.ko" || echo "LAB l1.insmod_failed=$m"
done
if [ -c /dev/kvm ]; then echo "LAB l1.kvm=1"; else echo "LAB l1.kvm=0"; fi
# The emulated CPUs' TSCs usually fail Linux's sync check (then L1 runs on hpet and KVM has no
# master clock for L2's kvmclock); recorded so a failing run shows which way this boot went.
echo "LAB l1.clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
ip link set lo up
cd /lab
if [ -f /lab/scenario.sh ]; then
    sh /lab/scenario.sh </dev/null
    rc=$?
else
    echo "lab: no /lab/scenario.sh"
    rc=127
fi
echo
echo "LAB l1.end_uptime=$(cut -d' ' -f1 /proc/uptime) status=$rc"
sync
poweroff -f
