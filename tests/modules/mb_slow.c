// SPDX-License-Identifier: GPL-2.0
/*
 * mb_slow - test module for modbroker's scale tests (tests/vm/scenarios/
 * slowinit.sh and wedged.sh).
 *
 * Its init prints "mb_slow: init attempt" (so inits can be counted in dmesg),
 * sleeps delay_ms milliseconds and succeeds.  The default, 50 s, is longer
 * than the 45 s the udev client used to wait for the daemon before loading
 * directly: a slow but healthy init, as drivers waiting for firmware have.
 */
#include <linux/module.h>
#include <linux/delay.h>

static uint delay_ms = 50000;
module_param(delay_ms, uint, 0444);
MODULE_PARM_DESC(delay_ms, "milliseconds to sleep in init (default 50000)");

static int __init mb_slow_init(void)
{
	pr_info("mb_slow: init attempt\n");
	msleep(delay_ms);
	pr_info("mb_slow: init done\n");
	return 0;
}

static void __exit mb_slow_exit(void)
{
	pr_info("mb_slow: exit\n");
}

module_init(mb_slow_init);
module_exit(mb_slow_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("modbroker test: init that sleeps 50 s, then succeeds");
MODULE_ALIAS("mbtest:slow");
