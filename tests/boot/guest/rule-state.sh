#!/bin/sh
# rule-state.sh - where 80-drivers.rules stands, as KEY=VALUE lines (run in the guest, or in the
# image's root by chroot): the run.sh checks compare them with what the package should leave.
#   diversions  how many names of 80-drivers.rules modbroker diverts (2: Debian 12's and 13's)
#   rule        whose /usr/lib/udev/rules.d/80-drivers.rules is: broker, udev or missing
#   distrib     yes if udev's own file is kept aside as 80-drivers.rules.distrib
#   etc_rule    yes if /etc/udev/rules.d/80-drivers.rules exists (packages must not put it there)
rule=/usr/lib/udev/rules.d/80-drivers.rules
echo "diversions=$(dpkg-divert --list '*/80-drivers.rules' | grep -c ' by modbroker$')"
if [ ! -e "$rule" ]; then
	echo rule=missing
elif grep -q 'modbroker load --udev' "$rule"; then
	echo rule=broker
else
	echo rule=udev
fi
if [ -e "$rule.distrib" ] && ! grep -q modbroker "$rule.distrib"; then echo distrib=yes; else echo distrib=no; fi
if [ -e /etc/udev/rules.d/80-drivers.rules ]; then echo etc_rule=yes; else echo etc_rule=no; fi
