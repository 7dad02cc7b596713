#include "daemon/invalidation/ack_collector.h"

#include <algorithm>

namespace tether {

AckCollector::AckCollector(const std::vector<uint32_t>& nodes) {
  for (uint32_t n : nodes) {
    if (nodes_.emplace(n, NodeState::kWaiting).second) ++waiting_;
  }
}

bool AckCollector::OnReply(uint32_t node, const absl::Status& status) {
  if (expired_) return false;
  auto it = nodes_.find(node);
  if (it == nodes_.end() || it->second != NodeState::kWaiting) return false;
  it->second = status.ok() ? NodeState::kAcked : NodeState::kFailed;
  return --waiting_ == 0;
}

void AckCollector::Expire() {
  if (expired_) return;
  expired_ = true;
  for (auto& [node, st] : nodes_) {
    if (st == NodeState::kWaiting) st = NodeState::kFailed;
  }
  waiting_ = 0;
}

std::vector<uint32_t> AckCollector::acked() const {
  std::vector<uint32_t> out;
  for (const auto& [node, st] : nodes_)
    if (st == NodeState::kAcked) out.push_back(node);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<uint32_t> AckCollector::failed() const {
  std::vector<uint32_t> out;
  for (const auto& [node, st] : nodes_)
    if (st == NodeState::kFailed) out.push_back(node);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace tether
