# L2 script of the lab's boot soak (see boot-pairs-l1.sh): a little work (process creation,
# page faults, syscalls), then power off.
i=0
while [ $i -lt 200 ]; do
    ls /proc/self/ >/dev/null
    i=$((i + 1))
done
echo "LAB l2done=1"
poweroff -f
