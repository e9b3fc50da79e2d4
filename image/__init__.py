"""Appliance image: recipe, systemd units, udev rules, builder, signer, flasher."""
