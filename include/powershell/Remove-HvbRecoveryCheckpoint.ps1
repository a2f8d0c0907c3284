<#
.SYNOPSIS
    Remove one Recovery checkpoint that a backup left behind, so Hyper-V merges its .avhdx back.
.DESCRIPTION
    Refuses anything but a Recovery checkpoint: Standard and Production checkpoints are the
    user's, Replica ones belong to Hyper-V Replica, and none of them is backup debris.
    Returns at once; the merge runs in the background and the caller waits for the disks
    to be back on .vhdx (Get-HvbVMBackupStatus shows them).
.PARAMETER VMId
    The VM's id (Get-VM's Id).
.PARAMETER CheckpointId
    The checkpoint's id (Get-VMSnapshot's Id); a checkpoint of any other type than Recovery is refused.
.OUTPUTS
    One JSON document: removed (id, name, type of the checkpoint removed; null under -WhatIf), clock_utc.
#>
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Mandatory)] [string] $VMId,
    [Parameter(Mandatory)] [string] $CheckpointId
)
$vm = Get-VM -Id $VMId
$checkpoint = Get-VMSnapshot -VM $vm | Where-Object { "$($_.Id)" -eq $CheckpointId }
if (-not $checkpoint) {
    throw [System.Management.Automation.ItemNotFoundException]::new("The checkpoint $CheckpointId of '$($vm.Name)' no longer exists.")
}
if ("$($checkpoint.SnapshotType)" -ne 'Recovery') {
    throw [System.InvalidOperationException]::new("'$($checkpoint.Name)' is a $($checkpoint.SnapshotType) checkpoint, not backup debris; it was left alone.")
}
$removed = $null
if ($PSCmdlet.ShouldProcess("$($vm.Name)", "Remove the Recovery checkpoint '$($checkpoint.Name)'")) {
    Remove-VMSnapshot -VMSnapshot $checkpoint -Confirm:$false
    $removed = @{ id = "$($checkpoint.Id)"; name = $checkpoint.Name; type = "$($checkpoint.SnapshotType)" }
}
@{ removed = $removed; clock_utc = (Get-Date).ToUniversalTime().ToString('o') }
