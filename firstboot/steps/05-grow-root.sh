#!/bin/sh
# Grow the root partition and its ext4 file system to the end of the card.
# Idempotent: does nothing when less than 1 MiB is left after the partition.
# Only an MBR (dos) table whose last partition is root is grown, as on every
# Raspberry Pi image; anything else is left alone with a note.
#
# Needs sfdisk (package fdisk on Debian >= 11, util-linux on stretch), partx and
# resize2fs. Test overrides: PIBAKE_GROW_DISK (a disk or disk image file),
# PIBAKE_GROW_PARTNUM, PIBAKE_GROW_FS (the file system's device or image file);
# with a file as disk the kernel is not told (no partx).
set -eu
LC_ALL=C
export LC_ALL

note() { printf 'grow-root: %s\n' "$*"; }

for tool in sfdisk resize2fs; do
    command -v "$tool" >/dev/null 2>&1 || { note "$tool not found; add it to the base image"; exit 1; }
done

if [ -n "${PIBAKE_GROW_DISK:-}" ]; then
    disk=$PIBAKE_GROW_DISK
    partnum=${PIBAKE_GROW_PARTNUM:-2}
    fs=${PIBAKE_GROW_FS:-}
else
    # The root fs's device number leads to its partition in sysfs; /proc/cmdline's
    # root= and findmnt's "/dev/root" are not reliable across Raspbian and Debian.
    majmin=$(mountpoint -d /)
    sys=$(readlink -f "/sys/dev/block/$majmin")
    if [ ! -r "$sys/partition" ]; then
        note "root ($majmin) is not on a partition; nothing to grow"
        exit 0
    fi
    partnum=$(cat "$sys/partition")
    disk=/dev/$(basename "$(dirname "$sys")")
    fs=/dev/$(basename "$sys")
fi

table=$(sfdisk -d "$disk")
case $table in
    *"label: dos"*) ;;
    *) note "$disk has no dos partition table; not growing it"; exit 0 ;;
esac

if [ -b "$disk" ]; then
    disk_sectors=$(blockdev --getsz "$disk")
else
    disk_sectors=$(( $(stat -c %s "$disk") / 512 ))
fi

# "DEV : start=   S, size=   N, type=83" lines; find ours and the highest start.
our_start="" our_size="" last_start=0
while IFS= read -r line; do
    case $line in
        /*" : start="*) ;;
        *) continue ;;
    esac
    dev=${line%% :*}
    rest=${line#*start=}
    start=$(echo "${rest%%,*}" | tr -d ' ')
    rest=${line#*size=}
    size=$(echo "${rest%%,*}" | tr -d ' ')
    [ "$start" -gt "$last_start" ] && last_start=$start
    n=${dev##*[!0-9]}
    if [ "$n" = "$partnum" ]; then
        our_start=$start
        our_size=$size
    fi
done <<TABLE
$table
TABLE

if [ -z "$our_start" ]; then
    note "$disk has no partition $partnum"
    exit 1
fi
if [ "$our_start" -ne "$last_start" ]; then
    note "partition $partnum is not the last one on $disk; not growing it"
    exit 0
fi

free=$(( disk_sectors - our_start - our_size ))
if [ "$free" -lt 2048 ]; then
    note "partition $partnum already fills $disk"
else
    note "growing partition $partnum of $disk by $(( free / 2048 )) MiB"
    echo ", +" | sfdisk --no-reread --force --quiet -N "$partnum" "$disk" >/dev/null
    if [ -b "$disk" ]; then
        # resize the in-use partition in the kernel without a reboot
        partx -u --nr "$partnum" "$disk"
    fi
fi

if [ -n "$fs" ]; then
    # a no-op ("Nothing to do!") when the fs already fills its partition
    out=$(resize2fs "$fs" 2>&1) || { note "resize2fs $fs failed: $(echo "$out" | tail -n 1)"; exit 1; }
    note "$(echo "$out" | tail -n 1)"
fi
exit 0
