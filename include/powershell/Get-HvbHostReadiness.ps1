<#
.SYNOPSIS
    What the preflight check asks of a host before its first backup: its versions and clock, the
    features, the account's rights, WinRM's limits and the backup target.
.DESCRIPTION
    Read-only. Group membership is asked by the groups' well-known SIDs, never by their names,
    which are translated on a Japanese or German host (S-1-5-32-544 Administrators, -578 Hyper-V
    Administrators, -551 Backup Operators); the answer names them in English.
.PARAMETER BackupTarget
    The inventory's backup target: a volume (E: or a volume path) or a network share (\\server\share).
.OUTPUTS
    One JSON document: host (computer_name, os_caption, clock_utc, ps_version); features (hyperv,
    windows_server_backup: installed or not); account (name, groups among Administrators, Hyper-V
    Administrators, Backup Operators); winrm (max_shells_per_user, max_memory_per_shell_mb,
    idle_timeout_ms); target (path, kind: volume or share, exists, free_bytes, null when unknown).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)][string]$BackupTarget
)
$now = (Get-Date).ToUniversalTime()
$os = Get-CimInstance -ClassName Win32_OperatingSystem
$identity = [Security.Principal.WindowsIdentity]::GetCurrent()
$principal = New-Object Security.Principal.WindowsPrincipal($identity)
$wellKnown = [ordered]@{ 'S-1-5-32-544' = 'Administrators'; 'S-1-5-32-578' = 'Hyper-V Administrators'; 'S-1-5-32-551' = 'Backup Operators' }
$share = $BackupTarget.StartsWith('\\')
$drive = $(if (-not $share) { Get-PSDrive -Name $BackupTarget.TrimEnd(':', '\') -PSProvider FileSystem -ErrorAction SilentlyContinue })
$free = $(if ($drive) { $drive.Free } else { $null })
if ($share) {  # the share's free space, as Get-HvbVMBackupProbe reads it; null when this session cannot read it
    $parts = $BackupTarget.TrimStart('\').Split('\')
    try { $free = [int64](New-Object -ComObject Scripting.FileSystemObject).GetDrive("\\$($parts[0])\$($parts[1])").AvailableSpace } catch { }
}
@{
    host = @{
        computer_name = $env:COMPUTERNAME; os_caption = $os.Caption; clock_utc = $now.ToString('o')
        ps_version = "$($PSVersionTable.PSVersion)"
    }
    features = @{
        hyperv = [bool](Get-WindowsFeature -Name Hyper-V).Installed
        windows_server_backup = [bool](Get-WindowsFeature -Name Windows-Server-Backup).Installed
    }
    account = @{
        name = $identity.Name
        groups = @($wellKnown.Keys | Where-Object { $principal.IsInRole([Security.Principal.SecurityIdentifier]$_) } | ForEach-Object { $wellKnown[$_] })
    }
    winrm = @{
        max_shells_per_user = [int](Get-Item -Path WSMan:\localhost\Shell\MaxShellsPerUser).Value
        max_memory_per_shell_mb = [int](Get-Item -Path WSMan:\localhost\Shell\MaxMemoryPerShellMB).Value
        idle_timeout_ms = [int](Get-Item -Path WSMan:\localhost\Shell\IdleTimeout).Value
    }
    target = @{
        path = $BackupTarget; kind = $(if ($share) { 'share' } else { 'volume' })
        exists = $(if ($share) { Test-Path -LiteralPath $BackupTarget } else { [bool]$drive })
        free_bytes = $free
    }
}
