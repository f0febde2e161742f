# The guest image recipe: a small Debian bookworm with qemu-guest-agent, booted with -kernel/-initrd.
# Its text is hashed into the cache directory name, so any change here means a rebuild.
# Inputs (env): ROOT (empty work dir for the tree), OUT (dir receiving vmlinuz, initrd.img, disk.qcow2).
set -euo pipefail
MIRROR=http://deb.debian.org/debian
# adduser/procps are not in minbase; util-linux-extra carries hwclock, which guest-set-time runs.
debootstrap --variant=minbase \
  --include=linux-image-cloud-amd64,initramfs-tools,systemd-sysv,udev,dbus,qemu-guest-agent,adduser,procps,util-linux-extra \
  bookworm "$ROOT" "$MIRROR"

mount -t proc proc "$ROOT/proc"
trap 'umount "$ROOT/proc" 2>/dev/null || true' EXIT

passwd -R "$ROOT" -d root
chroot "$ROOT" usermod -s /bin/bash root
echo pvesandbox-guest > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 pvesandbox-guest\n' > "$ROOT/etc/hosts"
echo '/dev/vda / ext4 rw,noatime 0 1' > "$ROOT/etc/fstab"
mkdir -p "$ROOT/tmp" && chmod 1777 "$ROOT/tmp"

# The agent is started by Debian's udev rule (SYSTEMD_WANTS on the virtio port); make sure it is there.
grep -q org.qemu.guest_agent.0 "$ROOT"/lib/udev/rules.d/*qemu-guest-agent*.rules

# qemu-ga's guest-set-time runs `hwclock -w` after setting the system clock, and hwclock waits
# for a second boundary to write the RTC: ≈ 1–1.5 s under TCG on every restore. QEMU's RTC
# follows the host clock anyway (-rtc clock=host), so that write is skipped; everything else
# (hwclock -s for guest-set-time without a time, reading) goes to the real binary.
chroot "$ROOT" dpkg-divert --local --rename --divert /usr/sbin/hwclock.real --add /usr/sbin/hwclock
cat > "$ROOT/usr/sbin/hwclock" <<'SHIM'
#!/bin/sh
[ "$*" = "-w" ] && exit 0
exec /usr/sbin/hwclock.real "$@"
SHIM
chmod 755 "$ROOT/usr/sbin/hwclock"

# Units that only cost boot time in a throwaway VM without network.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
         fstrim.timer systemd-networkd-wait-online.service; do
  ln -sf /dev/null "$ROOT/etc/systemd/system/$u"
done

# Small initramfs: only what a virtio disk boot needs.
sed -i 's/^MODULES=.*/MODULES=list/' "$ROOT/etc/initramfs-tools/initramfs.conf"
printf 'virtio_pci\nvirtio_blk\nvirtio_console\next4\n' >> "$ROOT/etc/initramfs-tools/modules"
chroot "$ROOT" update-initramfs -u -k all

cp -L "$ROOT/vmlinuz" "$OUT/vmlinuz"
cp -L "$ROOT/initrd.img" "$OUT/initrd.img"

umount "$ROOT/proc"
trap - EXIT
# Trim what a sandbox never reads.
rm -rf "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
       "$ROOT"/usr/share/locale/* "$ROOT"/var/cache/apt/* "$ROOT"/var/lib/apt/lists/* \
       "$ROOT"/var/cache/debconf/*-old "$ROOT"/var/log/*.log "$ROOT"/boot/*
mkfs.ext4 -q -F -L root -d "$ROOT" "$OUT/disk.raw" 1G
qemu-img convert -O qcow2 "$OUT/disk.raw" "$OUT/disk.qcow2"
rm -f "$OUT/disk.raw"
