// SPDX-License-Identifier: GPL-2.0
/*
 * mb_ok - test module for modbroker's real-kernel tests: init prints
 * "mb_ok: init value=N" and succeeds.  Alias "mbtest:ok".
 */
#include <linux/module.h>

static int value;
module_param(value, int, 0444);
MODULE_PARM_DESC(value, "any integer, printed by init (default 0)");

static int __init mb_ok_init(void)
{
	pr_info("mb_ok: init value=%d\n", value);
	return 0;
}

static void __exit mb_ok_exit(void)
{
	pr_info("mb_ok: exit\n");
}

module_init(mb_ok_init);
module_exit(mb_ok_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("modbroker test: init that succeeds");
MODULE_ALIAS("mbtest:ok");
