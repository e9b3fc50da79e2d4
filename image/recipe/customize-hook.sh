#!/bin/sh
# mmdebstrap --customize-hook for the Debian base of the kmsnode root ($1); cached by its inputs.
# The node itself is installed later by install-node.sh. Inputs come from the environment set by
# image/build.py: KMSNODE_KERNEL_OUT, KMSNODE_PRUNE (module directories to drop, relative to
# /usr/lib/modules/<ver>), KMSNODE_DEBS_OUT (every .deb used is copied there for the lock file),
# KMSNODE_LOCKED_DEBS (rebuild from a lock: take the kernel and busybox packages from there).
set -eu
R="$1"
K="$KMSNODE_KERNEL_OUT"
chroot "$R" systemctl mask apt-daily.timer apt-daily-upgrade.timer 2>/dev/null || true
# Kernel: unpack (no initramfs generator runs), prune, depmod; copy vmlinuz and busybox out.
mkdir -p "$K"
if [ -n "${KMSNODE_LOCKED_DEBS:-}" ]; then
    cp "$KMSNODE_LOCKED_DEBS"/linux-image-[0-9]*.deb "$KMSNODE_LOCKED_DEBS"/busybox-static_*.deb "$R/tmp/"
else
    chroot "$R" sh -c 'cd /tmp
      KPKG=$(apt-cache depends --important linux-image-amd64 \
             | sed -n "s/.*Depends: \(linux-image-[0-9].*\)/\1/p" | head -n1)
      apt-get download -q "$KPKG" busybox-static >/dev/null'
fi
mkdir -p "$KMSNODE_DEBS_OUT"
cp "$R"/var/cache/apt/archives/*.deb "$R"/tmp/*.deb "$KMSNODE_DEBS_OUT/"
for deb in "$R"/tmp/*.deb; do
    case "$deb" in
        *busybox-static*) dpkg-deb -x "$deb" "$K/busybox" ;;
        *) dpkg-deb -x "$deb" "$R"
           dpkg-deb -f "$deb" Package Version | paste -sd'\t' > "$K/kernel-package" ;;
    esac
done
rm -f "$R"/tmp/*.deb
KVER=$(ls "$R/usr/lib/modules" | head -n1)
for p in $KMSNODE_PRUNE; do rm -rf "$R/usr/lib/modules/$KVER/$p"; done
chroot "$R" depmod "$KVER"
cp "$R/boot/vmlinuz-$KVER" "$K/vmlinuz"
echo "$KVER" > "$K/kver"
# No package manager at runtime: drop apt state the read-only root would carry for nothing.
rm -rf "$R/var/lib/apt/lists/"* "$R/var/cache/apt/"*.bin "$R/var/log/"*.log
