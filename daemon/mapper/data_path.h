// DataPath: where a mapper's fetches and write-backs go. The home may be
// this node (a mapper beside its exporter: served straight from the
// BlockServer) or another node (its data endpoint, learned from the peer's
// Hello, over the transport chosen for it).
#ifndef TETHER_DAEMON_MAPPER_DATA_PATH_H_
#define TETHER_DAEMON_MAPPER_DATA_PATH_H_

#include <cstdint>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "daemon/transport/transport.h"

namespace tether {

class DataPath {
 public:
  using EndpointResolver = absl::AnyInvocable<absl::StatusOr<DataEndpoint>(uint32_t node)>;

  DataPath(uint32_t local_node, BlockServer* local_server, Transport* transport,
           EndpointResolver resolve)
      : local_node_(local_node),
        local_server_(local_server),
        transport_(transport),
        resolve_(std::move(resolve)) {}

  void Read(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
            absl::Span<uint8_t> dst, Transport::Done done);
  void Write(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
             absl::Span<const uint8_t> src, Transport::Done done);
  // Synchronous write-back helper: splits into transport-sized pieces.
  absl::Status WriteSync(uint32_t node, uint64_t segid, uint64_t grant, uint64_t offset,
                         absl::Span<const uint8_t> src);

 private:
  const uint32_t local_node_;
  BlockServer* const local_server_;
  Transport* const transport_;
  EndpointResolver resolve_;
};

}  // namespace tether

#endif  // TETHER_DAEMON_MAPPER_DATA_PATH_H_
