# L1 script of the lab's boot soak: six rounds of two tinyvmm guests booted at once (one with
# 1 vCPU, one with 2, 256 MiB each, no devices), each guest running boot-pairs-l2.sh and
# powering off. One line per guest: "SOAK <name> rc=<tinyvmm exit status> done=<1 if the
# guest's script finished>"; a failing guest's last log lines follow. Run it with:
#   cargo build --release --workspace
#   ./target/release/lab-run --script tests/soak/boot-pairs-l1.sh \
#       --l2-script tests/soak/boot-pairs-l2.sh --timeout 1500 --name soak
# README "Lab reliability" records what it measured.
echo "SOAK clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
mk() {
    cat >/lab/$1.json <<J
{"name":"$1","vcpus":$2,"memory_mib":256,
"kernel":{"path":"/lab/l2/vmlinuz","initrd":"/lab/l2/initrd.gz",
"cmdline":"console=ttyS0 reboot=k panic=1 quiet pci=off"},
"serial":"stdout"}
J
}
one() {
    timeout 200 tinyvmm --log-level info run /lab/$1.json >/tmp/$1.log 2>&1
    rc=$?
    grep -q "LAB l2done=1" /tmp/$1.log && d=1 || d=0
    echo "SOAK $1 rc=$rc done=$d up=$(cut -d' ' -f1 /proc/uptime)"
    [ $rc -ne 0 ] && tail -n 12 /tmp/$1.log
}
n=0
while [ $n -lt 6 ]; do
    mk a$n 1
    mk b$n 2
    one a$n &
    one b$n &
    wait
    n=$((n + 1))
done
lab-report soak_done=1
