// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title TraceAnchor
/// @notice Anchors the roots of the tracer's RFC 6962 Merkle audit log on a permissioned chain.
/// @dev Deliberately tiny and without upgrade or ownership-transfer paths: the platform checks
///      that the code at the configured address is byte-for-byte this contract's runtime code, so
///      the owner lives in storage (an immutable would be spliced into the runtime code and make
///      every deployment's code differ). Rotating the tracer key means deploying a new contract.
contract TraceAnchor {
    struct Anchor {
        // treeSize and timestamp share one storage slot; root takes the second.
        uint64 treeSize;
        uint64 timestamp;
        bytes32 root;
    }

    /// @notice The tracer's account: the deployer, the only one allowed to anchor.
    address public owner;

    Anchor[] private _anchors;

    /// @notice Smallest leaf index anchorLeaf still accepts (one past the last anchored leaf).
    uint64 public nextLeafIndex;

    event Anchored(uint256 indexed index, uint64 treeSize, bytes32 root);
    event LeafAnchored(uint64 indexed leafIndex, bytes32 leafHash);

    modifier onlyOwner() {
        require(msg.sender == owner, "TraceAnchor: caller is not the owner");
        _;
    }

    constructor() {
        owner = msg.sender;
    }

    /// @notice Anchors the root of the log when it held `treeSize` leaves.
    /// @dev A log only grows, so every anchor must cover strictly more leaves than the one before;
    ///      re-anchoring a size (possibly with another root) or going back is refused. This also
    ///      rules out anchoring the empty tree (size 0), which commits to nothing.
    function anchor(uint64 treeSize, bytes32 root) external onlyOwner {
        uint256 count = _anchors.length;
        if (count > 0) {
            require(
                treeSize > _anchors[count - 1].treeSize,
                "TraceAnchor: tree size must exceed the last anchored size"
            );
        } else {
            require(treeSize > 0, "TraceAnchor: tree size must exceed the last anchored size");
        }
        _anchors.push(Anchor(treeSize, uint64(block.timestamp), root));
        emit Anchored(count, treeSize, root);
    }

    /// @notice Per-trace mode: anchors one leaf hash in its own transaction.
    /// @dev Only the event is kept (logs are far cheaper than storage); the counter refuses
    ///      replaying or reordering leaves while allowing the mode to start at any leaf.
    function anchorLeaf(uint64 leafIndex, bytes32 leafHash) external onlyOwner {
        require(leafIndex >= nextLeafIndex, "TraceAnchor: leaf index already anchored");
        nextLeafIndex = leafIndex + 1;
        emit LeafAnchored(leafIndex, leafHash);
    }

    function anchorCount() external view returns (uint256) {
        return _anchors.length;
    }

    function anchorAt(uint256 index)
        external
        view
        returns (uint64 treeSize, bytes32 root, uint64 timestamp)
    {
        Anchor storage a = _anchors[index];
        return (a.treeSize, a.root, a.timestamp);
    }

    /// @notice The most recent anchor, or zeros when there is none.
    function latest() external view returns (uint64 treeSize, bytes32 root, uint64 timestamp) {
        uint256 count = _anchors.length;
        if (count == 0) {
            return (0, bytes32(0), 0);
        }
        Anchor storage a = _anchors[count - 1];
        return (a.treeSize, a.root, a.timestamp);
    }

    function version() external pure returns (string memory) {
        return "TraceAnchor 1.0.0";
    }
}
