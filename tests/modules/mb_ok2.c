// SPDX-License-Identifier: GPL-2.0
/*
 * mb_ok2 - a second always-succeeding test module, so a scenario can load
 * something fresh after mb_ok is already loaded (e.g. the fallback check
 * with the daemon stopped).  Alias "mbtest:ok2".
 */
#include <linux/module.h>

static int __init mb_ok2_init(void)
{
	pr_info("mb_ok2: init\n");
	return 0;
}

static void __exit mb_ok2_exit(void)
{
	pr_info("mb_ok2: exit\n");
}

module_init(mb_ok2_init);
module_exit(mb_ok2_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("modbroker test: second init that succeeds");
MODULE_ALIAS("mbtest:ok2");
