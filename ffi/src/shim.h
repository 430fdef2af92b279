/* Callable wrappers around DPDK's static-inline fast-path functions and macros.
 * Prefix vs_ so they can never clash with DPDK symbols. Each is one call per burst
 * (rx/tx, bulk alloc/free) or per rare event (copy, errno), never per packet field access:
 * mbuf fields are read from Rust through the bindgen layout. */
#ifndef VSWITCH_FFI_SHIM_H
#define VSWITCH_FFI_SHIM_H
#include <stdint.h>
struct rte_mbuf;
struct rte_mempool;

uint16_t vs_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t vs_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *vs_pktmbuf_alloc(struct rte_mempool *mp);
int vs_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **pkts, unsigned n);
void vs_pktmbuf_free(struct rte_mbuf *m);
char *vs_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
int vs_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
uint16_t vs_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t vs_pktmbuf_tailroom(const struct rte_mbuf *m);
int vs_errno(void);
unsigned vs_lcore_id(void);
uint64_t vs_get_tsc_cycles(void);
uint64_t vs_get_tsc_hz(void);
void vs_pause(void);
#endif
