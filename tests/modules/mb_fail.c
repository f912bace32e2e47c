// SPDX-License-Identifier: GPL-2.0
/*
 * mb_fail - test module for modbroker's real-kernel tests.
 *
 * Its init prints "mb_fail: init attempt", sleeps delay_ms milliseconds
 * (so concurrent load requests overlap with the one in flight) and then
 * returns -err.  err=0 makes it load successfully.
 */
#include <linux/module.h>
#include <linux/delay.h>

static uint delay_ms = 300;
module_param(delay_ms, uint, 0444);
MODULE_PARM_DESC(delay_ms, "milliseconds to sleep in init (default 300)");

static int err = 19; /* ENODEV */
module_param(err, int, 0444);
MODULE_PARM_DESC(err, "errno returned by init, 0 = succeed (default 19 = ENODEV)");

static int __init mb_fail_init(void)
{
	pr_info("mb_fail: init attempt\n");
	msleep(delay_ms);
	return err ? -err : 0;
}

static void __exit mb_fail_exit(void)
{
	pr_info("mb_fail: exit\n");
}

module_init(mb_fail_init);
module_exit(mb_fail_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("modbroker test: slow init that fails with -err");
MODULE_ALIAS("mbtest:fail");
